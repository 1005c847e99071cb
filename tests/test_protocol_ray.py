"""The protocol on a local Ray instance gives the same table as the local executor (same cells, same seeds).

Starts Ray on this machine (one CPU, no dashboard) and runs two closed-form cells on the untrained tiny model;
the scores must equal the in-process run's, and the cells land in the same resumable folder layout."""

from __future__ import annotations

import pytest

from unlearning.benchmarks import protocol as P

ray = pytest.importorskip("ray")

TIMING = ("unlearn_s", "peak_mem_bytes")


def test_ray_executor_gives_the_same_table_as_local(tiny_model, tmp_path):
    def run(executor: str):
        config = P.ProtocolConfig(model=str(tiny_model), methods="uce", concepts="3,7", out=tmp_path / executor, device="cpu",
                                  samples_per_prompt=2, num_inference_steps=2, executor=executor)
        protocol = P.resolve_protocol(config)
        return protocol, P.run_protocol(protocol, quiet=True)

    _, local = run("local")
    protocol, remote = run("ray")
    assert not ray.is_initialized()  # the instance it started was shut down
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert strip(remote["rows"]) == strip(local["rows"]) and len(remote["rows"]) == 2
    assert remote["original"]["rows"] == local["original"]["rows"]
    assert all(r["unlearn_s"] > 0 for r in remote["rows"])
    for key in protocol.cell_keys():
        assert protocol.store.get_measure(key, protocol.measure) is not None
