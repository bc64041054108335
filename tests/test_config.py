"""Node configuration: defaults, precedence, readable errors, the CLI check."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dicomnode.cli import app
from dicomnode.config import ConfigError, NodeConfig, load_config

REPO = Path(__file__).resolve().parents[1]
NODE_YAML = REPO / "configs" / "node.yaml"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for k in list(os.environ):
        if k.startswith("DICOMNODE_"):
            monkeypatch.delenv(k)


def _write(tmp_path: Path, data: object) -> Path:
    p = tmp_path / "node.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_node_yaml_documents_exactly_the_defaults() -> None:
    from_file = load_config(NODE_YAML)
    assert from_file.model_dump() == NodeConfig().model_dump()
    # every key of the model appears in the documented file (and nothing else)
    documented = yaml.safe_load(NODE_YAML.read_text())
    assert set(documented) == set(NodeConfig.model_fields)


def test_defaults_are_safe() -> None:
    cfg = load_config()
    assert cfg.network.bind_address == "127.0.0.1"
    assert cfg.network.port == 11112
    assert cfg.access.accept_any is False and cfg.access.allowed == []
    assert cfg.archive.fsync is True
    assert cfg.network.tls.enabled is False
    assert cfg.database_url == "sqlite:///var/dicomnode.db"
    assert cfg.archive_dir == Path("var/archive")


def test_precedence_defaults_file_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(
        tmp_path,
        {"ae_title": "FROMFILE", "network": {"port": 5000, "max_associations": 3}},
    )
    cfg = load_config(path)
    assert (cfg.ae_title, cfg.network.port, cfg.network.max_associations) == ("FROMFILE", 5000, 3)
    assert cfg.network.bind_address == "127.0.0.1"  # default kept
    monkeypatch.setenv("DICOMNODE_NETWORK__PORT", "6000")
    monkeypatch.setenv("DICOMNODE_ACCESS__ALLOWED", '[{"ae_title": "PACS", "host": "10.0.0.5"}]')
    monkeypatch.setenv("DICOMNODE_SELECTION__PHASE", "75")
    cfg = load_config(path)
    assert cfg.network.port == 6000  # environment beats file
    assert cfg.network.max_associations == 3  # file value of a sibling key survives
    assert cfg.ae_title == "FROMFILE"
    assert cfg.access.allowed[0].ae_title == "PACS" and cfg.access.allowed[0].host == "10.0.0.5"
    assert cfg.selection.phase == 75.0


def test_config_file_from_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DICOMNODE_CONFIG", str(_write(tmp_path, {"ae_title": "ENVFILE"})))
    assert load_config().ae_title == "ENVFILE"


@pytest.mark.parametrize(
    ("data", "key", "hint"),
    [
        ({"network": {"port": 70000}}, "network.port", "less than or equal to 65535"),
        ({"network": {"prot": 1}}, "network.prot", "expected one of: acse_timeout_s"),
        ({"archive": {"min_free": "lots"}}, "archive.min_free", "a percent like 5%"),
        ({"archive": {"min_free": "120%"}}, "archive.min_free", "between 0% and 100%"),
        ({"archive": {"duplicate_policy": "keep_all"}}, "archive.duplicate_policy", "keep_first"),
        ({"access": {"accept_any": "maybe"}}, "access.accept_any", "valid boolean"),
        ({"access": {"allowed": [{"ae_title": "A\\B"}]}}, "access.allowed.0.ae_title", "AE title"),
        ({"ae_title": "THIS_TITLE_IS_TOO_LONG"}, "ae_title", "at most 16"),
        ({"selection": {"phase": 120}}, "selection.phase", "less than 100"),
        ({"selection": {"late_instances": "sometimes"}}, "selection.late_instances", "reprocess"),
        ({"network": {"tls": {"enabled": True}}}, "network.tls", "cert_file and tls.key_file"),
        (
            {"assembler": {"quiet_time_s": 60, "forced_deadline_s": 10}},
            "assembler",
            "forced_deadline_s must be >= assembler.quiet_time_s",
        ),
        (
            {"destinations": [{"name": "x", "ae_title": "A", "host": "h", "port": 1}] * 2},
            "destinations",
            "repeated: x",
        ),
    ],
)
def test_errors_name_the_key_and_what_is_expected(
    tmp_path: Path, data: dict[str, object], key: str, hint: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, data))
    msg = str(err.value)
    assert f"  {key}:" in msg
    assert hint in msg


def test_environment_errors_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOMNODE_ASSEMBLER__QUIET_TIME_S", "soon")
    with pytest.raises(ConfigError, match="DICOMNODE_ASSEMBLER__QUIET_TIME_S") as err:
        load_config()
    assert "assembler.quiet_time_s" in str(err.value)


def test_file_problems_are_readable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("network: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(bad)


def test_min_free_in_bytes() -> None:
    a = NodeConfig(archive={"min_free": "5%"}).archive
    assert a.min_free_bytes(2_000_000) == 100_000
    assert NodeConfig(archive={"min_free": "2GiB"}).archive.min_free_bytes(1) == 2 * 1024**3
    assert NodeConfig(archive={"min_free": "500MB"}).archive.min_free_bytes(1) == 500_000_000
    assert NodeConfig(archive={"min_free": 1234}).archive.min_free_bytes(1) == 1234


def test_cli_config_check(tmp_path: Path) -> None:
    runner = CliRunner()
    good = _write(tmp_path, {"access": {"accept_any": True}})
    res = runner.invoke(app, ["--config", str(good), "config", "check"])
    assert res.exit_code == 0, res.output
    assert "accept_any: true" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"network": {"port": -1}}))
    res = runner.invoke(app, ["--config", str(bad), "config", "check"])
    assert res.exit_code == 2
    assert "network.port" in res.output


def test_file_errors_name_the_file_key_and_line(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(
        "ae_title: NODE\n"
        "network:\n"
        "  bind_address: 127.0.0.1\n"
        "  port: eleven\n"
        "access:\n"
        "  allowed:\n"
        "    - {ae_title: PACS}\n"
        "    - ae_title: 'A\\B'\n"
        "  acept_any: true\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    lines = {line.split(":")[0].strip(): line for line in msg.splitlines()[1:]}
    assert lines["network.port"].endswith(f"(got 'eleven') [file {path}, line 4]")
    assert lines["access.allowed.1.ae_title"].endswith(f"[file {path}, line 8]")
    assert lines["access.acept_any"] == (
        f"  access.acept_any: unknown key; expected one of: accept_any, allowed "
        f"[file {path}, line 9]"
    )
    assert "DICOMNODE_" not in "".join(lines.values())


def test_cli_config_check_blames_the_file_not_the_environment(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("network:\n  port: eleven\n")
    res = CliRunner().invoke(app, ["--config", str(bad), "config", "check"])
    assert res.exit_code == 2
    out = " ".join(res.output.split())  # the console wraps long lines
    assert "network.port:" in out and f"(got 'eleven') [file {bad}, line 2]" in out
    assert "DICOMNODE_NETWORK__PORT" not in out
