"""``benchmarks/real_widths.py``: ``--write`` adds its table to the page and keeps what the page says."""

from tests.benchmarks import benchmark_module


def test_write_appends_a_dated_section_and_keeps_the_page(tmp_path):
    real_widths = benchmark_module("real_widths")
    page = tmp_path / "real-widths.md"
    page.write_text("# Every family at its real widths\n\nWhy the fp16 rotary angles stay float32.\n")
    row = real_widths.StepResult("parity fp16", 130.4, 3 << 30, "PASSED: logits | keys")
    table = real_widths.table({"qwen2-vl": (real_widths.FAMILIES["qwen2-vl"], None, [row])})
    real_widths.append_section(page, "2026-11-29 08:40 UTC", "Some CPU; 24 GiB", "--write", table)
    text = page.read_text()
    assert text.startswith("# Every family at its real widths\n\nWhy the fp16 rotary angles stay float32.\n")
    assert "## Measured (2026-11-29 08:40 UTC; Some CPU; 24 GiB)" in text
    assert "`python benchmarks/real_widths.py --write`" in text
    assert "| Qwen2-VL-2B | parity fp16 | 130 s | 3.00 GiB | PASSED: logits / keys |" in text
