"""Reconciliation that cannot be fooled (issue 9), through the asset graph and the simulator.

Each test breaks one stage the way production did (another run of the date, a database that drops
rows, a damaged or foreign file, a killed run) and checks that the audit says so and that no file
is deleted that is still needed.
"""

import datetime as dt
from pathlib import Path

import dagster as dg
from sqlalchemy.engine import URL

import app.measure_worker
from app.coercion import normalize_header
from app.runner import execute_date, run_pipeline
from app.settings import load_settings
from crm_assets.cleanup import cleanup_on_passed_audit
from crm_assets.definitions import defs
from crm_assets.keys import AUDIT, AUDIT_CHECK, MERGED, RAW, TABLE, key
from crm_resources.run_info import TODAY_TAG
from tests.graph_helpers import TODAY, expected_keys_at, portal_config, query, seed


def _audits(database_url: URL, bucket: str) -> list:
    return query(
        database_url,
        "SELECT run_id, status, reason, download_total, merged_rows, expected_unique, "
        "ingested_rows, quarantined, blocking, missing_keys, cleanup_status, manifest, "
        f"failed_stores FROM pipeline_audit WHERE bucket = '{bucket}' ORDER BY id",
    )


def _keys(database_url: URL, bucket: str = "missed_leads") -> set[tuple]:
    if bucket == "missed_leads":
        rows = query(database_url, "SELECT store_code, pickup_no FROM missed_leads")
        return {(r["store_code"], r["pickup_no"]) for r in rows}
    if bucket == "undelivered_all":
        rows = query(database_url, "SELECT store_code, order_id FROM undelivered_orders")
        return {(r["store_code"], r["order_id"]) for r in rows}
    rows = query(database_url, "SELECT store_code, mobile_no FROM repeat_customers")
    return {(r["store_code"], r["mobile_no"]) for r in rows}


def _csvs(data_dir: Path, day: dt.date = TODAY) -> list[Path]:
    folder = data_dir / day.isoformat()
    return sorted(folder.rglob("*.csv")) if folder.exists() else []


# ---------------------------------------------------------------- 1. hand-off within one run


def test_a_step_alone_never_takes_another_runs_result(
    graph_env: Path, database_url: URL, make_portal_sim
) -> None:
    sim = make_portal_sim(store_count=2, seed=31, today=TODAY)
    seed(database_url, sim)
    first = execute_date(
        load_settings(),
        run_date=TODAY,
        buckets=["missed_leads"],
        dry_run=False,
        portal_override=portal_config(sim),
    )
    assert first.buckets["missed_leads"].audit == "passed"
    # Re-materializing the audit alone (another run) must not combine the first run's load with
    # anything: it has no merge or load of its own, so it fails and writes no audit.
    job = defs.resolve_job_def("crm_daily")
    with dg.DagsterInstance.get() as instance:
        for selection in ([key("missed_leads", AUDIT)], [key("missed_leads", MERGED)]):
            result = job.execute_in_process(
                partition_key=TODAY.isoformat(),
                instance=instance,
                asset_selection=selection,
                raise_on_error=False,
            )
            assert not result.success
            failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
            assert "only takes the results of its own run" in str(failure.step_failure_data)
    assert len(_audits(database_url, "missed_leads")) == 1


def test_a_merge_without_its_load_in_the_run_keeps_no_measuring_process(
    graph_env: Path, database_url: URL, make_portal_sim
) -> None:
    """The merge step keeps its measuring process (the merged file staged) only for a table
    step of the same run: a run of download and merge alone keeps none."""
    sim = make_portal_sim(store_count=2, seed=33, today=TODAY)
    seed(database_url, sim)
    job = defs.resolve_job_def("crm_daily")
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            partition_key=TODAY.isoformat(),
            instance=instance,
            asset_selection=[key("missed_leads", RAW), key("missed_leads", MERGED)],
            run_config={"resources": {"portal": {"config": portal_config(sim)}}},
            tags={TODAY_TAG: TODAY.isoformat()},
        )
    assert result.success
    assert app.measure_worker._KEPT == {}


# ---------------------------------------------------------------- 3. counts are measured


def test_a_database_that_drops_one_stores_rows_fails_the_audit_and_keeps_files(
    graph_env: Path, database_url: URL, make_portal_sim
) -> None:
    sim = make_portal_sim(store_count=3, seed=32, today=TODAY)
    seed(database_url, sim)
    victim = sim.store_codes[1]
    query(
        database_url,
        "CREATE FUNCTION drop_one() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF NEW.store_code = '{victim}' THEN RETURN NULL; END IF; RETURN NEW; END $$",
    )
    query(
        database_url,
        "CREATE TRIGGER drop_one BEFORE INSERT ON missed_leads "
        "FOR EACH ROW EXECUTE FUNCTION drop_one()",
    )
    code = run_pipeline(
        load_settings(),
        run_date=TODAY,
        buckets=["missed_leads"],
        portal_override=portal_config(sim),
    )
    assert code == 1
    (audit,) = _audits(database_url, "missed_leads")
    assert audit["status"] == "failed" and audit["missing_keys"] > 0
    assert audit["ingested_rows"] < audit["merged_rows"]
    assert victim in audit["reason"] and audit["cleanup_status"] == "kept"
    assert any(p.name == f"{victim}-missed-leads.csv" for p in _csvs(graph_env))


# ---------------------------------------------------------------- 4, 5. damaged records


def test_ragged_and_unbalanced_quote_are_rejected_the_rest_loads(
    graph_env: Path, database_url: URL, make_portal_sim
) -> None:
    sim = make_portal_sim(
        store_codes=["A101", "B202", "C303"],
        seed=33,
        today=TODAY,
        store_behaviour={"A101": "ragged@missed_leads", "B202": "quote@missed_leads"},
    )
    seed(database_url, sim)
    outcome = execute_date(
        load_settings(),
        run_date=TODAY,
        buckets=["missed_leads"],
        portal_override=portal_config(sim),
    )
    summary = outcome.buckets["missed_leads"]
    assert summary.audit == "failed" and outcome.exit_code == 1
    rejects = query(
        database_url,
        "SELECT store_code, line_number, code, blocking FROM ingest_rejects ORDER BY store_code",
    )
    by_store = {(r["store_code"], r["code"]) for r in rejects}
    assert ("A101", "ragged") in by_store
    assert any(s == "B202" and c in ("runaway_quote", "unterminated_quote") for s, c in by_store)
    assert all(r["blocking"] for r in rejects)
    assert {r["line_number"] for r in rejects if r["store_code"] == "A101"} == set(
        sim.fault_lines("missed_leads", "A101")
    )
    # the other rows are loaded (C303 entirely; A101 without its ragged record), never shifted
    loaded = _keys(database_url)
    assert expected_keys_at(sim, "missed_leads", ["C303"], TODAY) <= loaded
    damaged = sim.damaged_records("missed_leads", "A101")
    rows = sim.served_rows("missed_leads", "A101")
    pickup = next(h for h in rows[0] if normalize_header(h) == "pickup no")
    assert damaged and {("A101", rows[i][pickup]) for i in damaged}.isdisjoint(loaded)
    assert len(_csvs(graph_env)) == 4  # three store files and the merged file, all kept


def test_footer_nul_and_padded_store_codes(
    graph_env: Path, database_url: URL, make_portal_sim
) -> None:
    sim = make_portal_sim(
        store_codes=["A111", "B222", "C333"],
        seed=34,
        today=TODAY,
        store_behaviour={
            "A111": "footer@repeat_customers",
            "B222": "nul@missed_leads",
            "C333": "paddedstore",
        },
    )
    seed(database_url, sim)
    outcome = execute_date(
        load_settings(),
        run_date=TODAY,
        buckets=["missed_leads", "repeat_customers"],
        portal_override=portal_config(sim),
    )
    codes = {
        (r["store_code"], r["code"]) for r in query(database_url, "SELECT * FROM ingest_rejects")
    }
    assert ("A111", "footer") in codes and ("B222", "bad_value") in codes
    assert {s for s, _ in _keys(database_url, "repeat_customers")} == {"A111", "B222", "C333"}
    assert ("Total", "45") not in _keys(database_url, "repeat_customers")
    assert {s for s, _ in _keys(database_url)} == {"A111", "B222", "C333"}  # no ' c333 '
    assert outcome.buckets["repeat_customers"].audit == "failed"  # a footer blocks by default


# ---------------------------------------------------------------- 11, 14, 15. whole files


def test_a_file_of_another_store_is_refetched_then_fails_only_that_store(
    graph_env: Path, database_url: URL, make_portal_sim
) -> None:
    sim = make_portal_sim(
        store_codes=["A1", "B2", "C3", "D4"],
        seed=35,
        today=TODAY,
        store_behaviour={"A1": "otherstore:1@missed_leads", "B2": "otherstore@missed_leads"},
    )
    seed(database_url, sim)
    outcome = execute_date(
        load_settings(),
        run_date=TODAY,
        buckets=["missed_leads"],
        portal_override=portal_config(sim),
    )
    summary = outcome.buckets["missed_leads"]
    assert list(summary.failed_stores) == ["B2"] and "B2" in summary.failed_stores["B2"]
    assert summary.audit == "passed" and outcome.exit_code == 1
    assert sim.dashboard_visits("A1") == 2  # re-selected once, then the right file
    assert _keys(database_url) == expected_keys_at(sim, "missed_leads", ["A1", "C3", "D4"], TODAY)


def test_plain_text_junk_and_undecodable_bodies_fail_only_their_store(
    graph_env: Path, database_url: URL, make_portal_sim
) -> None:
    sim = make_portal_sim(
        store_codes=["A1", "B2", "C3", "D4", "E5"],
        seed=36,
        today=TODAY,
        store_behaviour={
            "A1": "plaintext:*@missed_leads",
            "B2": "cp1252@missed_leads",
            "C3": "junk@missed_leads",
            "D4": "whitespace@missed_leads",
        },
    )
    seed(database_url, sim)
    outcome = execute_date(
        load_settings(),
        run_date=TODAY,
        buckets=["missed_leads", "repeat_customers"],
        portal_override=portal_config(sim),
    )
    failed = outcome.buckets["missed_leads"].failed_stores
    assert sorted(failed) == ["A1", "B2", "C3", "D4"]
    assert "offset" in failed["B2"] and "B2" in failed["B2"]
    assert outcome.buckets["missed_leads"].audit == "passed"
    assert outcome.buckets["repeat_customers"].audit == "passed"
    assert not outcome.buckets["repeat_customers"].failed_stores
    assert {s for s, _ in _keys(database_url)} == {"E5"}
    assert {s for s, _ in _keys(database_url, "repeat_customers")} == {"A1", "B2", "C3", "D4", "E5"}


# ---------------------------------------------------------------- 12, 13. scope and quarantine


def test_blank_repeat_mobiles_are_quarantined_and_the_day_cleans_up(
    graph_env: Path, database_url: URL, make_portal_sim
) -> None:
    sim = make_portal_sim(store_count=2, seed=37, today=TODAY, bad_rows_per_store=1)
    seed(database_url, sim)
    code = run_pipeline(
        load_settings(),
        run_date=TODAY,
        buckets=["repeat_customers"],
        portal_override=portal_config(sim),
    )
    assert code == 0
    (audit,) = _audits(database_url, "repeat_customers")
    assert audit["status"] == "passed" and audit["quarantined"] == 2 and audit["blocking"] == 0
    assert "quarantined" in audit["reason"] and audit["cleanup_status"] == "deleted"
    kept = query(database_url, "SELECT code, blocking, raw_row FROM ingest_rejects")
    assert len(kept) == 2 and all(r["code"] == "missing_key" and not r["blocking"] for r in kept)
    assert _csvs(graph_env) == []


def test_a_bad_store_code_in_store_master_does_not_stop_the_good_stores(
    graph_env: Path, database_url: URL, make_portal_sim
) -> None:
    sim = make_portal_sim(store_count=2, seed=38, today=TODAY)
    seed(database_url, sim)
    query(
        database_url,
        "INSERT INTO store_master (store_code, etl_flag) VALUES ('../etc', true)",
    )
    outcome = execute_date(
        load_settings(),
        run_date=TODAY,
        buckets=["missed_leads"],
        portal_override=portal_config(sim),
    )
    summary = outcome.buckets["missed_leads"]
    assert list(summary.failed_stores) == ["../etc"] and outcome.exit_code == 1
    assert summary.audit == "passed"
    assert _keys(database_url) == expected_keys_at(sim, "missed_leads", sim.store_codes, TODAY)


# ---------------------------------------------------------------- 6, 8. the cleanup sensor


def test_sensor_cleans_up_both_dates_of_a_backfill_and_never_after_the_cli(
    graph_env: Path, database_url: URL, make_portal_sim, monkeypatch
) -> None:
    days = [TODAY - dt.timedelta(days=2), TODAY - dt.timedelta(days=1)]
    sim = make_portal_sim(store_count=2, seed=39, today=days[0])
    seed(database_url, sim)
    for day in days:  # the two days' downloads, kept by dry runs
        sim.set_today(day)
        monkeypatch.setattr("app.runner._today", lambda settings, d=day: d)
        assert (
            run_pipeline(
                load_settings(),
                run_date=day,
                buckets=["missed_leads"],
                dry_run=True,
                portal_override=portal_config(sim),
            )
            == 0
        )
    monkeypatch.setattr("app.runner._today", lambda settings: TODAY)
    for day in reversed(days):  # the backfill: later date first
        outcome = execute_date(load_settings(), run_date=day, buckets=["missed_leads"])
        assert outcome.buckets["missed_leads"].audit == "passed"
    with dg.DagsterInstance.get() as instance:
        context = dg.build_sensor_context(instance=instance, definitions=defs)
        requests = cleanup_on_passed_audit(context).run_requests
        assert sorted(r.tags["crm/date"] for r in requests) == [d.isoformat() for d in days]
        job = defs.resolve_job_def("crm_cleanup")
        for request in requests:
            assert job.execute_in_process(run_config=request.run_config, instance=instance).success
        again = cleanup_on_passed_audit(
            dg.build_sensor_context(instance=instance, definitions=defs)
        )
        assert not again.run_requests
        # a CLI run cleans up itself and records it: the sensor launches nothing for it
        sim.set_today(TODAY)
        assert (
            run_pipeline(
                load_settings(),
                run_date=TODAY,
                buckets=["missed_leads"],
                portal_override=portal_config(sim),
            )
            == 0
        )
        after = cleanup_on_passed_audit(
            dg.build_sensor_context(instance=instance, definitions=defs)
        )
        assert not after.run_requests
    assert all(not _csvs(graph_env, d) for d in [*days, TODAY])


# ---------------------------------------------------------------- 9. dry runs record nothing


def test_a_dry_run_records_nothing_the_ui_could_take_as_real(
    graph_env: Path, database_url: URL, make_portal_sim
) -> None:
    sim = make_portal_sim(store_count=2, seed=40, today=TODAY)
    seed(database_url, sim)
    code = run_pipeline(
        load_settings(), run_date=TODAY, dry_run=True, portal_override=portal_config(sim)
    )
    assert code == 0
    with dg.DagsterInstance.get() as instance:
        for bucket in ("missed_leads", "undelivered_all", "repeat_customers"):
            for stage in (TABLE, AUDIT):
                records = instance.fetch_materializations(
                    dg.AssetRecordsFilter(
                        asset_key=key(bucket, stage), asset_partitions=[TODAY.isoformat()]
                    ),
                    limit=1,
                ).records
                assert not records, (bucket, stage)
            check = instance.get_latest_asset_check_evaluation_record(
                dg.AssetCheckKey(key(bucket, AUDIT), AUDIT_CHECK)
            )
            assert check is None
    for table in ("pipeline_audit", "ingest_rejects", "missed_leads"):
        assert query(database_url, f"SELECT count(*) AS n FROM {table}")[0]["n"] == 0


# ---------------------------------------------------------------- kept files and killed runs


def test_an_operators_files_and_a_killed_runs_partials(
    graph_env: Path, database_url: URL, make_portal_sim
) -> None:
    past = TODAY - dt.timedelta(days=4)
    sim = make_portal_sim(store_codes=["A1", "B2"], seed=41, today=past)
    seed(database_url, sim)
    day = graph_env / past.isoformat()
    (day / "dead-run").mkdir(parents=True)
    for store in ("A1", "B2"):  # what an operator downloaded in a browser that day
        (day / f"{store}-missed-leads.csv").write_bytes(sim.served_bytes("missed_leads", store))
    stale = day / "dead-run" / ".A1-missed-leads.csv.1234abcd.part"
    stale.write_bytes(b"half a file")
    code = run_pipeline(load_settings(), run_date=past, buckets=["missed_leads"])
    assert code == 0
    (audit,) = _audits(database_url, "missed_leads")
    raw = [e for e in audit["manifest"] if e.get("kind") == "raw"]
    assert {e["origin"] for e in raw} == {"operator"}
    assert {Path(e["taken_from"]).parent for e in raw} == {day}
    assert not stale.exists() and audit["cleanup_status"] == "deleted"
    assert _keys(database_url) == expected_keys_at(sim, "missed_leads", ["A1", "B2"], past)


def test_midnight_during_a_run_fails_the_stores_after_it(
    graph_env: Path, database_url: URL, make_portal_sim, monkeypatch
) -> None:
    sim = make_portal_sim(store_codes=["A1", "B2", "C3"], seed=42, today=TODAY)
    seed(database_url, sim)
    calls = {"n": 0}

    def clock() -> dt.date:
        calls["n"] += 1
        return TODAY if calls["n"] <= 2 else TODAY + dt.timedelta(days=1)

    monkeypatch.setattr("app.downloader.core.franchise_today", clock)
    monkeypatch.setattr("app.pipeline.franchise_today", clock, raising=False)
    outcome = execute_date(
        load_settings(),
        run_date=TODAY,
        buckets=["missed_leads"],
        portal_override=portal_config(sim),
    )
    failed = outcome.buckets["missed_leads"].failed_stores
    assert failed and all("day changed" in why for why in failed.values())
    assert outcome.exit_code == 1


def test_a_day_where_every_store_is_empty_is_not_silent(
    graph_env: Path, database_url: URL, make_portal_sim
) -> None:
    """Stores the portal does not know get an empty report: a passed audit must say so."""
    sim = make_portal_sim(store_count=2, seed=43, today=TODAY)
    query(
        database_url,
        "INSERT INTO store_master (store_code, etl_flag) VALUES ('Z001', true), ('Z002', true)",
    )
    outcome = execute_date(
        load_settings(),
        run_date=TODAY,
        buckets=["missed_leads"],
        portal_override=portal_config(sim),
    )
    summary = outcome.buckets["missed_leads"]
    assert summary.audit == "passed" and "every store returned an empty report" in (
        summary.reason or ""
    )
    with dg.DagsterInstance.get() as instance:
        check = instance.get_latest_asset_check_evaluation_record(
            dg.AssetCheckKey(key("missed_leads", AUDIT), "all_stores_downloaded")
        )
    assert check is not None and check.evaluation is not None and not check.evaluation.passed
