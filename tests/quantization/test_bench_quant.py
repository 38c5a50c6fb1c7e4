"""`anymodel bench quant` runs end to end on a tiny preset and reports each format against float32."""

from anymodel.server.cli import main as cli_main


def test_bench_quant_tiny(capsys):
    argv = ["bench", "quant", "--preset", "tiny", "--formats", "w4a16,fp8-block", "--group-size", "16", "--repeats", "1",
            "--num-prompts", "2", "--input-len", "4", "--output-len", "2"]
    assert cli_main(argv) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line[:1].isalnum()}
    assert rows["float32"][2] == "1.000" and rows["float32"][-1] == "2/2"
    # tiny preset: the 64 x 64 / 64 x 128 linears shrink, embeddings stay float32
    assert float(rows["w4a16"][2]) < 0.9 and float(rows["fp8-block"][2]) < 0.95
