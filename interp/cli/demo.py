"""`interp demo`: evaluate the shipped default models; write figures and a report (interp.demo)."""
from __future__ import annotations

from interp.cli.options import add_n, check_out


def add_parser(sub):
    d = sub.add_parser("demo", help="evaluate the shipped default models; write figures and a report")
    d.add_argument("--out", default="runs/demo", help="output directory (the README's figures come from "
                   "--out figures/demo)")
    add_n(d, 96, help="examples per difficulty point")
    d.add_argument("--overwrite", action="store_true", help="replace a demo of other settings in --out (without it "
                   "such a folder is refused; one of the same settings is written again)")
    d.set_defaults(func=cmd_demo, resumes=False)


def cmd_demo(a):
    from interp.demo import run_demo
    check_out(a.out)
    out = run_demo(out=a.out, n=a.n, overwrite=a.overwrite)
    print((out / "report.md").read_text())
    print(f"wrote {out}/report.md, {out}/accuracy.png, {out}/results.csv")
