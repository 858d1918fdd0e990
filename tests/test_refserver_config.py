"""Reference server configuration: the built-in models, latency and fault settings, clear errors."""

from __future__ import annotations

import copy
import json
import random
import statistics

import grpc
import pytest

from refserver.config import ConfigError, FaultSpec, LatencySpec, default_config, load_config, parse_config

MINIMAL = {"models": [{"name": "m", "kind": "add", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
                       "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]}]}


def with_model(**changes) -> dict:
    cfg = copy.deepcopy(MINIMAL)
    cfg["models"][0].update(changes)
    return cfg


def test_default_config_serves_what_the_issue_names():
    cfg = load_config(None)
    dummy = cfg.models["dummy"][1].model
    assert [(s.name, s.dtype.name, s.shape) for s in dummy.inputs] == [("b", "FP32", (1, 10))]
    resnet = cfg.models["resnet"][1].model
    assert resnet.inputs[0].shape == (1, 3, 224, 224) and resnet.outputs[0].shape == (1, 1000)
    precisions = {cfg.models[n][1].model.inputs[0].dtype.name for n in cfg.models if n.startswith("add_")}
    assert precisions == {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
                          "UINT64"}
    assert sorted(cfg.models["versioned"]) == [1, 2]
    assert cfg.models["versioned"][2].model.inputs[0].shape != cfg.models["versioned"][1].model.inputs[0].shape
    assert cfg.models["stateful"][1].model.stateful
    assert len(cfg.models["two_inputs"][1].model.inputs) == 2
    assert any(-1 in s.shape[1:] for s in cfg.models["dynamic"][1].model.inputs)


def test_per_version_overrides():
    cfg = parse_config(with_model(versions={"1": {}, "3": {"params": {"addend": 5}, "latency": {"ms": 3}}}))
    assert sorted(cfg.models["m"]) == [1, 3]
    assert cfg.models["m"][3].model.params == {"addend": 5}
    assert cfg.models["m"][3].latency.params == {"ms": 3} and cfg.models["m"][1].latency.is_zero


@pytest.mark.parametrize("raw, message", [
    ({"models": []}, "non-empty list"),
    (with_model(kind="nope"), "unknown kind 'nope'"),
    (with_model(latency={"distribution": "zipf"}), "unknown distribution 'zipf'"),
    (with_model(latency={"distribution": "uniform", "min_ms": 3}), "needs min_ms, max_ms"),
    (with_model(latency={"distribution": "uniform", "min_ms": 3, "max_ms": 1}), "min_ms is above max_ms"),
    (with_model(latency={"ms": -1}), "needs a number >= 0"),
    (with_model(latency={"ms": 1, "stall": {"every_s": 1, "duration_ms": 2000}}), "duration_ms < every_s"),
    (with_model(faults={"rate": 1.5}), "from 0 to 1"),
    (with_model(faults={"rate": 0.1, "code": "BROKEN"}), "unknown gRPC status 'BROKEN'"),
    (with_model(versions=[0]), "positive integers"),
    (with_model(colour="red"), "unknown keys ['colour']"),
    (with_model(inputs=[{"name": "x", "datatype": "FP99", "shape": [1]}]), "unknown precision 'FP99'"),
    (with_model(inputs=[{"name": "x", "datatype": "FP32", "shape": [0, 2]}]), "positive or -1"),
    (with_model(outputs=[]), "as many outputs as inputs"),
    ({"models": MINIMAL["models"] * 2}, "defined twice"),
])
def test_bad_config_names_the_key(raw, message):
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{models: ")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(MINIMAL))
    assert list(load_config(good).models) == ["m"]


def test_latency_distributions_have_the_configured_moments():
    rng = random.Random(1)
    n = 20000
    uni = LatencySpec.parse({"distribution": "uniform", "min_ms": 2, "max_ms": 8}, "t")
    xs = [uni.sample_s(rng) * 1000 for _ in range(n)]
    assert 2 <= min(xs) and max(xs) <= 8 and abs(statistics.fmean(xs) - 5) < 0.1
    logn = LatencySpec.parse({"distribution": "lognormal", "median_ms": 4, "sigma": 0.5}, "t")
    assert abs(statistics.median(logn.sample_s(rng) * 1000 for _ in range(n)) - 4) < 0.15
    mix = LatencySpec.parse({"distribution": "mixture", "components": [
        {"weight": 99, "ms": 1}, {"weight": 1, "distribution": "fixed", "ms": 100}]}, "t")
    slow = sum(mix.sample_s(rng) > 0.05 for _ in range(n)) / n
    assert 0.007 < slow < 0.013
    expo = LatencySpec.parse({"distribution": "exponential", "mean_ms": 3}, "t")
    assert abs(statistics.fmean(expo.sample_s(rng) * 1000 for _ in range(n)) - 3) < 0.15


def test_stall_wait_and_fault_spec():
    lat = LatencySpec.parse({"ms": 0, "stall": {"every_s": 2, "duration_ms": 200}}, "t")
    assert lat.stall_wait_s(100.05) == pytest.approx(0.15)
    assert lat.stall_wait_s(100.5) == 0.0 and lat.stall_wait_s(101.99) == 0.0
    assert not lat.is_zero
    spec = FaultSpec.parse({"rate": 0.25, "code": "resource_exhausted", "message": "busy"}, "t")
    assert spec.code is grpc.StatusCode.RESOURCE_EXHAUSTED and spec.rate == 0.25 and spec.message == "busy"


def test_builtin_default_is_json_serializable():
    assert json.loads(json.dumps(default_config()))["models"][0]["name"] == "dummy"
