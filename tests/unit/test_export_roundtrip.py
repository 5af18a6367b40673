"""`flows export` then `flows import` gives back every data flow as it was, whatever its
configuration holds (every value a flow can hold: nested tables, lists, nulls, large integers,
any text a database stores)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tests.conftest import SUPPORT_DIR
from tests.unit.conftest import run_main

pytestmark = pytest.mark.usefixtures("isolated_cli")

# Every text a database stores: any character but NUL and lone surrogates (those are refused).
texts = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=8)
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=10,
)
configurations = st.dictionaries(texts, values, max_size=4)
flows = st.lists(
    st.tuples(
        configurations,
        st.sampled_from([None, "90s", "5m", "2h"]),
        st.sampled_from([None, "0 3 * * 1-5", "*/15 * * * *"]),
        st.booleans(),
        st.integers(-5, 5),
    ),
    min_size=1,
    max_size=3,
)


def _config(folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "dfjob.toml"
    path.write_text(
        f'[database]\nurl = "sqlite:///dfjob.db"\n[flows]\npaths = [{json.dumps(str(SUPPORT_DIR))}]\n'
        '[log]\nformat = "json"\n',
        encoding="utf-8",
    )
    return str(path)


def _ok(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    code, out, err = run_main(capsys, *args, "--json")
    assert code == 0, (args, err)
    return json.loads(out)


def _comparable(flow: dict[str, Any]) -> dict[str, Any]:
    drop = {"id", "created_at", "updated_at", "next_run_at", "last_run_at", "last_run_status"}
    return {key: value for key, value in flow.items() if key not in drop}


@hypothesis_settings(
    max_examples=40,
    deadline=None,
    database=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(cases=flows)
def test_export_then_import_gives_back_every_flow(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cases: list[tuple[Any, ...]]
) -> None:
    run = f"r{len(list(tmp_path.iterdir()))}"
    source, target = _config(tmp_path / run / "source"), _config(tmp_path / run / "target")
    for index, (configuration, every, cron, enabled, priority) in enumerate(cases):
        schedule = ["--every", every] if every else ["--cron", cron] if cron else []
        _ok(
            capsys, "--config", source, "flows", "add", f"flow-{index}", "--class", "sample_flows:Succeed",
            "--config-json", json.dumps(configuration), "--priority", str(priority), *schedule,
            *([] if enabled else ["--disabled"]),
        )  # fmt: skip
    exported = tmp_path / run / "flows.toml"
    code, text, err = run_main(capsys, "--config", source, "flows", "export")
    assert code == 0, err
    exported.write_text(text, encoding="utf-8")

    assert _ok(capsys, "--config", target, "flows", "import", str(exported)) == {"created": len(cases), "updated": 0}

    before = [_comparable(flow) for flow in _ok(capsys, "--config", source, "flows", "list")]
    after = [_comparable(flow) for flow in _ok(capsys, "--config", target, "flows", "list")]
    assert after == before
