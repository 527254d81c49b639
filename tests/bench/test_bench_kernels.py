"""The kernels benchmark (`rollout-len bench kernels`): the CPU path end to end, on the quick shape."""

import json

from rollout_len.bench import kernels as kernels_bench


def test_bench_quick_writes_json(tmp_path, capsys):
    path = tmp_path / "out" / "kernels.json"
    result = kernels_bench.run(str(path), quick=True, threads=1)
    on_disk = json.loads(path.read_text())
    assert on_disk == json.loads(json.dumps(result))
    cpu = on_disk["cpu"]
    for impl in ("naive", "chunked"):
        assert isinstance(cpu[impl]["peak_bytes"], int) and cpu[impl]["peak_bytes"] > 0
        assert cpu[impl]["time_s"] > 0
    # quick shape (T=256, V=8192): naive holds several 8 MiB (T, V) tensors, chunked one 4 MiB tile at a time
    assert cpu["naive"]["peak_bytes"] > 16 * 2**20
    assert cpu["chunked"]["peak_bytes"] < cpu["naive"]["peak_bytes"]
    assert cpu["max_abs_diff"] <= 1e-4
    out = capsys.readouterr().out
    assert "chunked" in out and f"wrote {path}" in out
