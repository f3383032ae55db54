"""dagster.yaml and its scale-out variants are valid, and say what the README promises.

No Docker engine, Kubernetes cluster or Dagster daemon is needed; what is checked, exactly:
- every file passes Dagster's own instance loader (`dagster_instance_config`: the whole
  instance schema, the storage / run_queue rules, `run_monitoring`, `run_retries`);
- the main file builds a real `DagsterInstance` (its storage swapped for SQLite in a temporary
  folder; tests/test_entrypoints.py loads it unchanged on PostgreSQL) whose run monitoring and
  run retries are on, and Dagster's own monitoring code fails a run stuck STARTING or STARTED;
- the DockerRunLauncher variant: its `config` is processed against
  `DockerRunLauncher.config_type()` and the launcher is instantiated by Dagster's own
  rehydration (the Docker client is only created when a run is launched); its
  `container_kwargs` pass docker-py's own argument check (`_create_container_args`), and its
  image, network, volumes and forwarded variables match docker-compose.yml and app settings;
- the K8sRunLauncher variant: its `config` is processed against `K8sRunLauncher.config_type()`,
  and dagster-k8s's own `construct_dagster_k8s_job` builds the Kubernetes Job a run would get
  (the kubernetes client's models check every field name); the launcher itself is not
  instantiated, because its constructor loads cluster credentials.
dagster-docker and dagster-k8s are dev dependencies; if one is missing its launcher checks are
skipped with a reason saying which package to install (the instance-schema checks still run).
"""

import copy
import importlib.util
import logging
import shutil
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._config import process_config, resolve_to_config_type
from dagster._core.instance.config import dagster_instance_config
from dagster._core.launcher import RunLauncher
from dagster._core.test_utils import create_run_for_test
from dagster._serdes.config_class import ConfigurableClassData

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
MAIN = ROOT / "dagster.yaml"
DOCKER = ROOT / "docker" / "dagster.docker-launcher.yaml"
K8S = ROOT / "docker" / "dagster.k8s.yaml"
COMPOSE = ROOT / "docker-compose.yml"
SHARED = ("storage", "run_coordinator", "run_retries", "telemetry")


def _yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _validated(path: Path, tmp_path: Path) -> dict[str, Any]:
    """The file as Dagster's instance loader validates it (as DAGSTER_HOME/dagster.yaml)."""
    home = tmp_path / path.stem
    home.mkdir()
    shutil.copy(path, home / "dagster.yaml")
    config, custom_class = dagster_instance_config(str(home))
    assert custom_class is None
    return dict(config)


def _processed(config_schema: Any, value: dict[str, Any]) -> dict[str, Any]:
    result = process_config(resolve_to_config_type(config_schema), value)
    assert result.success, [e.message for e in result.errors or []]
    return dict(result.value or {})


def _need(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        package = module.replace("_", "-")
        pytest.skip(f"{package} is not installed: `pip install -e '.[dev]'` brings it")


# ---------------------------------------------------------------- the main dagster.yaml


@pytest.fixture
def sqlite_instance(tmp_path: Path) -> Any:
    """A real instance from the repository's dagster.yaml, its storage on SQLite."""
    config = _yaml(MAIN)
    config["storage"] = {"sqlite": {"base_dir": str(tmp_path / "storage")}}
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


def test_main_file_turns_on_run_monitoring_and_run_retries(
    tmp_path: Path, sqlite_instance: dg.DagsterInstance
) -> None:
    config = _validated(MAIN, tmp_path)
    assert config["run_launcher"]["class"] == "DefaultRunLauncher"
    instance = sqlite_instance
    assert instance.run_monitoring_enabled
    assert instance.run_monitoring_max_resume_run_attempts == 0
    assert 0 < instance.run_monitoring_start_timeout_seconds <= 600
    assert 0 < instance.run_monitoring_max_runtime_seconds <= 4 * 3600
    assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
    # crashes are retried as new runs; a failed step is retried in its run (RetryPolicy) or not
    assert instance.run_retries_retry_on_asset_or_op_failure is False


def test_the_default_launcher_cannot_resume_so_resuming_must_stay_off(tmp_path: Path) -> None:
    config = _yaml(MAIN)
    config["storage"] = {"sqlite": {"base_dir": str(tmp_path / "storage")}}
    config["run_monitoring"]["max_resume_run_attempts"] = 1
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(Exception, match="max_resume_run_attempts to 0"):
        dg.DagsterInstance.from_config(str(tmp_path))


def test_run_monitoring_fails_runs_that_never_start_or_never_end(
    sqlite_instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster._daemon.monitoring import run_monitoring

    instance = sqlite_instance
    log = logging.getLogger("test_run_monitoring")
    starting = create_run_for_test(instance, job_name="crm_daily", status=None)
    started = create_run_for_test(instance, job_name="crm_daily", status=None)
    instance.handle_run_event(
        started.run_id,
        dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, job_name="crm_daily"),
    )
    later = run_monitoring.get_current_timestamp() + instance.run_monitoring_max_runtime_seconds
    monkeypatch.setattr(run_monitoring, "get_current_timestamp", lambda: later + 1)

    run_monitoring.monitor_starting_run(instance, _record(instance, starting.run_id), log)
    run_monitoring.check_run_timeout(
        instance,
        _record(instance, started.run_id),
        log,
        float(instance.run_monitoring_max_runtime_seconds),
    )

    for run_id in (starting.run_id, started.run_id):
        run = instance.get_run_by_id(run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.FAILURE, run_id


def _record(instance: dg.DagsterInstance, run_id: str) -> Any:
    (record,) = instance.get_run_records(dg.RunsFilter(run_ids=[run_id]))
    return record


# ---------------------------------------------------------------- the variants


@pytest.mark.parametrize("path", [DOCKER, K8S], ids=lambda p: p.name)
def test_variants_pass_dagster_s_instance_schema_and_share_the_main_settings(
    path: Path, tmp_path: Path
) -> None:
    config = _validated(path, tmp_path)
    main = _validated(MAIN, tmp_path)
    for section in SHARED:  # a run worker reports with the same retry rules as the daemon
        assert config[section] == main[section], section
    assert config["run_monitoring"]["enabled"] is True
    assert config["run_monitoring"]["max_resume_run_attempts"] == 0
    assert set(config["run_monitoring"]) == set(main["run_monitoring"])


def test_a_bad_launcher_config_is_rejected(tmp_path: Path) -> None:
    _need("dagster_docker")
    from dagster_docker import DockerRunLauncher

    config = copy.deepcopy(_yaml(DOCKER)["run_launcher"]["config"])
    config["netwrok"] = config.pop("network")
    result = process_config(resolve_to_config_type(DockerRunLauncher.config_type()), config)
    assert not result.success  # the check below is not a rubber stamp


def _compose() -> dict[str, Any]:
    return _yaml(COMPOSE)


def test_docker_launcher_config_is_dagster_docker_s_and_matches_compose() -> None:
    _need("dagster_docker")
    import docker.constants
    import docker.models.containers
    from dagster_docker import DockerRunLauncher

    launcher_cfg = _yaml(DOCKER)["run_launcher"]
    assert (launcher_cfg["module"], launcher_cfg["class"]) == (
        "dagster_docker",
        "DockerRunLauncher",
    )
    config = _processed(DockerRunLauncher.config_type(), launcher_cfg["config"])
    launcher = ConfigurableClassData(
        launcher_cfg["module"], launcher_cfg["class"], yaml.safe_dump(launcher_cfg["config"])
    ).rehydrate(as_type=RunLauncher)
    assert isinstance(launcher, DockerRunLauncher)
    assert launcher.supports_check_run_worker_health  # a dead container fails its run
    docker.models.containers._create_container_args(  # docker-py's own check of the kwargs
        {
            "image": config["image"],
            "command": ["dagster", "api", "execute_run"],
            "environment": {},
            "network": config["network"],
            "version": docker.constants.DEFAULT_DOCKER_API_VERSION,
            **config["container_kwargs"],
        }
    )

    compose = _compose()
    assert config["image"] == compose["x-app-image"]["image"]
    assert config["network"] == f"{compose['name']}_default"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in config["container_kwargs"]["volumes"]}
    app_mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["x-app-volumes"]}
    assert set(mounts) == set(app_mounts)
    for path, volume in app_mounts.items():
        assert mounts[path] == f"{compose['name']}_{volume}", path  # compose prefixes names


def test_docker_runs_get_every_setting_the_app_reads() -> None:
    forwarded = set(_yaml(DOCKER)["run_launcher"]["config"]["env_vars"])
    compose_env = set(_compose()["x-app-environment"])
    assert compose_env <= forwarded, f"not forwarded to runs: {sorted(compose_env - forwarded)}"
    settings = {name.upper() for name in Settings.model_fields}
    assert settings <= forwarded, f"settings not forwarded to runs: {sorted(settings - forwarded)}"


def test_k8s_launcher_config_is_dagster_k8s_s_and_builds_a_valid_job() -> None:
    _need("dagster_k8s")
    from dagster_k8s import K8sRunLauncher
    from dagster_k8s.job import (
        DagsterK8sJobConfig,
        UserDefinedDagsterK8sConfig,
        construct_dagster_k8s_job,
    )

    launcher_cfg = _yaml(K8S)["run_launcher"]
    assert (launcher_cfg["module"], launcher_cfg["class"]) == ("dagster_k8s", "K8sRunLauncher")
    config = _processed(K8sRunLauncher.config_type(), launcher_cfg["config"])
    job_fields = DagsterK8sJobConfig.config_type_job().keys() - {"job_image", "namespace"}
    job_config = DagsterK8sJobConfig(
        job_image=config["job_image"],
        dagster_home=config["dagster_home"],
        instance_config_map=config["instance_config_map"],
        postgres_password_secret=config["postgres_password_secret"],
        **{k: v for k, v in config.items() if k in job_fields and k != "job_namespace"},
    )
    job = construct_dagster_k8s_job(
        job_config,
        ["dagster", "api", "execute_run", "{}"],
        "dagster-run-test",
        user_defined_k8s_config=UserDefinedDagsterK8sConfig.from_dict(config["run_k8s_config"]),
        component="run_worker",
    )
    assert job.spec.backoff_limit == 0  # Dagster's run retries decide, not Kubernetes
    pod = job.spec.template.spec
    assert pod.service_account_name == "crm-runs"
    assert pod.security_context.run_as_user == 10001  # the Dockerfile's USER
    (container,) = pod.containers
    sources = {(s.config_map_ref or s.secret_ref).name for s in container.env_from}
    assert sources == {"crm-app-env", "crm-app-secrets"}
    assert {(m.name, m.mount_path) for m in container.volume_mounts} >= {("crm-data", "/data")}
    claims = {v.name: v.persistent_volume_claim for v in pod.volumes}
    assert claims["crm-data"].claim_name == "crm-data"


def test_a_bad_kubernetes_field_is_rejected() -> None:
    _need("dagster_k8s")
    from dagster_k8s.job import UserDefinedDagsterK8sConfig

    with pytest.raises(Exception, match="backof_limit"):
        UserDefinedDagsterK8sConfig.from_dict({"job_spec_config": {"backof_limit": 0}})
