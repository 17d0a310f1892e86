"""interp.figsave.save_fig: the figure lands whole or not at all."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from interp.figsave import save_fig  # noqa: E402


def test_writes_png_and_leaves_no_temporary(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    p = save_fig(fig, tmp_path / "sub" / "f.png", dpi=50)
    plt.close(fig)
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [x.name for x in p.parent.iterdir()] == ["f.png"]


def test_format_follows_extension(tmp_path):
    fig = plt.figure()
    p = save_fig(fig, tmp_path / "f.pdf")
    plt.close(fig)
    assert p.read_bytes()[:4] == b"%PDF"


def test_failed_save_keeps_previous_file(tmp_path):
    path = tmp_path / "f.png"
    path.write_bytes(b"old")

    class Broken:
        def savefig(self, f, **kw):
            with open(f, "wb") as h:
                h.write(b"half")
            raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        save_fig(Broken(), path)
    assert path.read_bytes() == b"old"
    assert [x.name for x in tmp_path.iterdir()] == ["f.png"]
