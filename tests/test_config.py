"""params.yaml is typed and validated: unknown keys and wrong types are errors that name the key."""

from pathlib import Path

import pytest

from stepcode.config import ConfigError, Params, load_params, parse_params

ROOT = Path(__file__).resolve().parent.parent


def test_repository_params_load():
    params = load_params(ROOT / "params.yaml")   # the repository's file, from whatever directory pytest runs in
    assert params.trace.max_lines == 10
    assert params.trace.hash_seeds[0] != params.trace.hash_seeds[1]
    assert params.sandbox.resolved_workers() >= 1


def test_defaults_when_empty():
    assert parse_params({}) == Params()


@pytest.mark.parametrize("raw, fragment", [
    ({"trace": {"max_line": 10}}, "trace.max_line: unknown key"),
    ({"tracing": {}}, "tracing: unknown key"),
    ({"trace": {"max_lines": "ten"}}, "trace.max_lines"),
    ({"sandbox": {"timeout_s": "3"}}, "sandbox.timeout_s"),
    ({"sandbox": {"workers": -1}}, "sandbox.workers"),
    ({"trace": {"hash_seeds": [1, 1]}}, "must differ"),
])
def test_invalid_params_name_the_key(raw, fragment):
    with pytest.raises(ConfigError) as err:
        parse_params(raw, source="p.yaml")
    assert fragment in str(err.value)
    assert "p.yaml" in str(err.value)


def test_int_accepted_where_float_meant():
    assert parse_params({"sandbox": {"timeout_s": 2}}).sandbox.timeout_s == 2.0


def test_malformed_yaml_names_the_file(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("trace: [unclosed\n")
    with pytest.raises(ConfigError, match="params.yaml: not valid YAML"):
        load_params(p)
    with pytest.raises(ConfigError, match="no such file"):
        load_params(tmp_path / "missing.yaml")
