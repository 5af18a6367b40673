"""Class-path resolution: what `load_flow_class` accepts and how it refuses the rest."""

from __future__ import annotations

import dataclasses
import sys
import uuid
from pathlib import Path

import pytest

import dfjob
from dfjob.errors import DfjobError
from dfjob.flow import ClassPathRefused, Flow, add_import_paths, bound_logger, load_flow_class
from tests.conftest import SUPPORT_DIR


@pytest.fixture(autouse=True)
def _import_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    add_import_paths((str(SUPPORT_DIR),))


def _module(folder: Path, prefix: str, body: str) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.py").write_text(body, encoding="utf-8")
    return name


def test_loads_a_flow_subclass() -> None:
    cls = load_flow_class("sample_flows:Succeed", ())
    assert issubclass(cls, Flow)
    assert cls.__name__ == "Succeed"


def test_loads_when_the_module_is_allowed() -> None:
    assert load_flow_class("sample_flows:Fail", ("sample_flows",)).__name__ == "Fail"


@pytest.mark.parametrize(
    "path",
    ["sample_flows", "sample_flows.Succeed", "sample_flows:", ":Succeed", "sample flows:Succeed", "a..b:C", "m:1X", ""],
)
def test_malformed_class_path_is_refused(path: str) -> None:
    with pytest.raises(DfjobError, match=r"package\.module:Name"):
        load_flow_class(path, ())


def test_missing_module_is_refused() -> None:
    with pytest.raises(DfjobError, match="cannot import"):
        load_flow_class(f"no_such_module_{uuid.uuid4().hex[:8]}:Thing", ())


def test_missing_attribute_is_refused() -> None:
    with pytest.raises(DfjobError, match="no attribute Nope"):
        load_flow_class("sample_flows:Nope", ())


def test_module_failing_at_import_is_a_refusal_not_a_crash(tmp_path: Path) -> None:
    add_import_paths((str(tmp_path),))
    name = _module(tmp_path, "broken", "raise RuntimeError('kaboom at import')\n")
    with pytest.raises(DfjobError, match="kaboom at import"):
        load_flow_class(f"{name}:F", ())


def test_class_that_is_not_a_flow_is_refused() -> None:
    with pytest.raises(ClassPathRefused, match=r"not a subclass of dfjob\.Flow"):
        load_flow_class("sample_flows:NotAFlow", ())


def test_a_function_is_refused() -> None:
    with pytest.raises(ClassPathRefused):
        load_flow_class("os.path:join", ())


def test_flow_itself_is_refused() -> None:
    with pytest.raises(ClassPathRefused):
        load_flow_class("dfjob:Flow", ())


def test_module_outside_allow_list_is_refused_before_import(tmp_path: Path) -> None:
    add_import_paths((str(tmp_path),))
    marker = tmp_path / "imported"
    name = _module(tmp_path, "etl_evil", f"from pathlib import Path\nPath({str(marker)!r}).write_text('x')\n")
    with pytest.raises(ClassPathRefused, match=r"flows\.allowed_modules"):
        load_flow_class(f"{name}:F", ("etl",))
    assert not marker.exists()
    assert name not in sys.modules
    # The control: the same module does write its marker once it is allowed to be imported.
    with pytest.raises(DfjobError):
        load_flow_class(f"{name}:F", ())
    assert marker.exists()


def test_allow_list_is_on_dotted_boundaries() -> None:
    with pytest.raises(ClassPathRefused):
        load_flow_class("sample_flows:Succeed", ("sample",))
    with pytest.raises(ClassPathRefused):
        load_flow_class("sample_flows:Succeed", ("sample_flows.sub",))


def test_base_flow_run_is_not_implemented() -> None:
    class Empty(dfjob.Flow):
        pass

    with pytest.raises(NotImplementedError):
        Empty({}, {}, None).run()


def test_flow_holds_config_params_and_log() -> None:
    flow = load_flow_class("sample_flows:Succeed", ())({"c": 1}, {"p": "2"}, bound_logger(job_id=1))
    assert flow.run() == {"config": {"c": 1}, "params": {"p": "2"}}


def test_discard_is_refused_a_retry_by_the_runner_and_keeps_its_reason() -> None:
    from dfjob import protocol
    from dfjob.runner import run_attempt

    job = protocol.Job(
        job_id=1, run_id=1, data_flow_id=1, data_flow_name="d", class_path="sample_flows:DiscardIt",
        configuration={}, params={}, attempt=1, max_attempts=5,
    )  # fmt: skip
    outcome = run_attempt(job, (), 1024)
    assert (outcome["status"], outcome["retry"]) == ("failed", "never")
    assert outcome["error_message"] == "Discard: bad input, do not retry"
    # A plain exception keeps the normal retry rules.
    failing = run_attempt(dataclasses.replace(job, class_path="sample_flows:Fail"), (), 1024)
    assert (failing["status"], failing["retry"]) == ("failed", "normal")
