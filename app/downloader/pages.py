"""Reading the portal's HTML pages: only what the sign-on flow needs, with the stdlib parser.

The reports link is read from the home page rather than hard-coded (PORTAL.md, Session 3): the
portal puts a single-use ticket in it, and its host is the reports site's, which may differ from
the configured base URL's spelling.
"""

import re
from html.parser import HTMLParser

REPORTS_CARD_TITLE = "Daily Operations Tracker"
_TITLE_RE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


class _CardParser(HTMLParser):
    """Collects (title, links) per `.card`; a card is a div whose class list holds `card`."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.cards: list[tuple[str, list[str]]] = []
        self._stack: list[tuple[str, int | None]] = []  # (tag, index of the card it opens)
        self._open_cards: list[int] = []
        self._in_title: list[int] = []
        self._titles: dict[int, list[str]] = {}
        self._outer_links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {k: v or "" for k, v in attrs}
        classes = attr.get("class", "").split()
        card_index: int | None = None
        if tag == "div" and "card" in classes:
            card_index = len(self.cards)
            # A card wrapped in a link counts that link as its own.
            self.cards.append(("", list(self._outer_links[-1:])))
            self._open_cards.append(card_index)
        if tag == "a" and attr.get("href"):
            if self._open_cards:
                self.cards[self._open_cards[-1]][1].append(attr["href"])
            else:
                self._outer_links.append(attr["href"])
        if tag == "h5" and "card-title" in classes and self._open_cards:
            self._in_title.append(self._open_cards[-1])
        if tag not in ("br", "img", "input", "meta", "link", "hr"):
            self._stack.append((tag, card_index))

    def handle_endtag(self, tag: str) -> None:
        while self._stack:
            open_tag, card_index = self._stack.pop()
            if card_index is not None and self._open_cards:
                self._open_cards.pop()
            if open_tag == "h5" and self._in_title:
                self._in_title.pop()
            if open_tag == "a" and not self._open_cards and self._outer_links:
                self._outer_links.pop()
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._in_title:
            index = self._in_title[-1]
            title, links = self.cards[index]
            self.cards[index] = (title + data, links)


def find_card_link(page: str, title: str = REPORTS_CARD_TITLE) -> str | None:
    """The first link of the card whose `h5.card-title` reads `title` (whitespace-insensitive)."""
    parser = _CardParser()
    parser.feed(page)
    parser.close()
    wanted = " ".join(title.split()).lower()
    for card_title, links in parser.cards:
        if " ".join(card_title.split()).lower() == wanted and links:
            return links[0]
    return None


def is_login_required(page: str | bytes) -> bool:
    """The reports site's logged-out page, or the main site's login form."""
    text = page.decode("utf-8", "replace") if isinstance(page, bytes) else page
    lowered = text[:20000].lower()
    return "you need to be logged in" in lowered or 'name="user_name"' in lowered


def page_title(head: bytes) -> str:
    match = _TITLE_RE.search(head[:8192])
    if not match:
        return ""
    return " ".join(match.group(1).decode("utf-8", "replace").split())[:80]
