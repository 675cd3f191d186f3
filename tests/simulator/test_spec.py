"""Chip specs: shipped chips, derived numbers, with_(), errors that name field, value and rule."""
import pytest
from typer.testing import CliRunner

from simulator.spec import ChipSpecError, list_chips, load_chip


def test_mtia2i_defaults():
    c = load_chip("mtia2i")
    assert c.clock_hz == 1.35e9
    assert (c.pe_grid.rows, c.pe_grid.cols) == (8, 8)
    assert c.peak_ops_per_s("bf16") == 2 * 1024 * 64 * 1.35e9       # 177 TFLOPS
    assert round(c.peak_ops_per_s("bf16") / 1e12) == 177
    assert round(c.peak_ops_per_s("int8") / 1e12) == 354
    assert c.peak_ops_per_s("fp16") == c.peak_ops_per_s("bf16")
    assert c.local_mem.bytes == 384 * 1024 and c.local_mem.bytes_per_s == 1e12
    assert c.sram_bytes == 256 * 2**20 and c.sram.bytes_per_s == 2.7e12
    assert c.dram_bytes_per_s == 204.8e9 and c.dram.channels == 16 and c.dram.bytes == 128 * 2**30
    assert c.host_link.bytes_per_s == 32e9 and c.simd.elems_per_cycle == 32
    assert round(2 * 32 * 64 * c.clock_hz / 1e12, 1) == 5.5        # SIMD TOPS
    with pytest.raises(KeyError):
        c.peak_ops_per_s("fp8")


def test_list_and_load():
    assert {"mtia2i", "tiny", "tpu-like"} <= set(list_chips())
    c = load_chip("tiny")
    assert load_chip(c) is c
    assert load_chip(load_chip.__globals__["CHIPS_DIR"] / "tiny.yaml") == c
    with pytest.raises(ChipSpecError, match="unknown chip 'nope'; known chips: .*mtia2i.*tiny"):
        load_chip("nope")


def test_frozen_hashable_fingerprint():
    a, b = load_chip("mtia2i"), load_chip("mtia2i")
    assert a == b and hash(a) == hash(b) and a.fingerprint() == b.fingerprint()
    assert len({a, b}) == 1
    c = a.with_(clock_hz=1.5e9)
    assert c.fingerprint() != a.fingerprint() and a.clock_hz == 1.35e9
    with pytest.raises(Exception):
        a.clock_hz = 2e9


def test_with_nested_and_sections():
    c = load_chip("mtia2i")
    assert c.with_(dram__bytes_per_s=409.6e9).dram_bytes_per_s == 409.6e9
    assert c.with_(local_mem__bytes="512 KiB").local_mem.bytes == 512 * 1024
    assert c.with_(dpe__macs_per_cycle__bf16=2048).peak_ops_per_s("bf16") == 2 * c.peak_ops_per_s("bf16")
    g = c.with_(pe_grid={"rows": 4})
    assert (g.pe_grid.rows, g.pe_grid.cols) == (4, 8)
    with pytest.raises(ChipSpecError, match="unknown field 'dram__speed'"):
        c.with_(dram__speed=1)


def test_errors_name_field_value_and_rule():
    c = load_chip("tiny")
    with pytest.raises(ChipSpecError, match=r"local_mem\.bytes = -3: Input should be greater than 0"):
        c.with_(local_mem__bytes=-3)
    with pytest.raises(ChipSpecError, match=r"dpe\.model = 'foo': Input should be 'cached_stream', 'systolic_os' or 'systolic_ws'"):
        c.with_(dpe__model="foo")
    with pytest.raises(ChipSpecError, match="must equal array_rows\\*array_cols"):
        c.with_(dpe__model="systolic_os")
    with pytest.raises(ChipSpecError, match="whole number"):
        c.with_(clock_hz=1.5)


def test_bad_file_names_file_field_and_value(tmp_path):
    text = (load_chip.__globals__["CHIPS_DIR"] / "tiny.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("channels: 2", "channels: two").replace("lut_cycles: 2", "lut_cyclez: 2"))
    with pytest.raises(ChipSpecError) as err:
        load_chip(bad)
    msg = str(err.value)
    assert str(bad) in msg
    assert "dram.channels = 'two': Input should be a valid integer" in msg
    assert "simd.lut_cyclez" in msg and "Extra inputs are not permitted" in msg
    bad.write_text("name: [unclosed")
    with pytest.raises(ChipSpecError, match="not valid YAML"):
        load_chip(bad)
    with pytest.raises(ChipSpecError, match="size"):
        load_chip("tiny").with_(sram__bytes="12 parsecs")


def test_tpu_like_chip_is_systolic():
    c = load_chip("tpu-like")
    assert c.dpe.model.value == "systolic_ws"
    assert c.peak_ops_per_s("bf16") == 2 * 128 * 128 * 4 * 0.94e9


def test_cli_lists_and_shows():
    from ember.cli import app
    runner = CliRunner()
    out = runner.invoke(app, ["chips"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "mtia2i" in out.output and "tiny" in out.output and "176.9 TFLOPS" in out.output
    out = runner.invoke(app, ["chips", "show", "mtia2i"], env={"COLUMNS": "200"})
    assert out.exit_code == 0 and "bytes_per_s: 204800000000.0" in out.output
    out = runner.invoke(app, ["chips", "show", "nope"])
    assert out.exit_code == 1
