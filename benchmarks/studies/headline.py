"""The headline table of docs/results.md: chosen methods on both benchmarks, with intervals.

For each `NAME=NOISE_DIR[,FINETUNE_DIR]`: from the noise benchmark's results.json, AUROC and
contamination at 10% with their 95% intervals and the paired differences to random and IFD;
from the fine-tune benchmark's (if given), at budget 10%, the declared reading (`--reading auc`:
the mean held-out loss over the evaluations after step 0; `final`: the last) and its paired
differences. A difference marked * has an interval that excludes zero.

    python benchmarks/studies/headline.py sharegpt=runs/sg600,runs/sg600-finetune \\
        selfinstruct=runs/si252,runs/si252-finetune --methods drop,gsnr,ifd,loss,length,random
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cell(i: dict | None, digits: int = 3) -> str:
    if i is None:
        return "-"
    return f"{i['estimate']:.{digits}f} [{i['low']:.{digits}f}, {i['high']:.{digits}f}]"


def diff(i: dict | None, digits: int = 3) -> str:
    if i is None:
        return "-"
    star = "*" if i["low"] > 0 or i["high"] < 0 else ""
    return (f"{i['estimate']:+.{digits}f} [{i['low']:+.{digits}f}, "
            f"{i['high']:+.{digits}f}]{star}")


def rows(name: str, noise_dir: Path, finetune_dir: Path | None, methods: list[str],
         reading: str = "auc") -> list[str]:
    noise = json.loads((noise_dir / "results.json").read_text())["summary"]
    finetune = (json.loads((finetune_dir / "results.json").read_text())["results"].get("0.1", {})
                if finetune_dir else {})
    out = []
    for method in methods:
        n, f = noise.get(method), finetune.get(method)
        if n is None:
            continue
        out.append("| " + " | ".join([
            name, method, cell(n["auroc"]), diff(n.get("vs_random", {}).get("auroc")),
            diff(n.get("vs_ifd", {}).get("auroc")), cell(n["contamination@0.1"]),
            diff(n.get("vs_random", {}).get("contamination@0.1")),
            cell(f[reading], 4) if f else "-",
            diff(f.get(f"{reading}_vs_random"), 4) if f else "-",
            diff(f.get(f"{reading}_vs_ifd"), 4) if f else "-"]) + " |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="NAME=NOISE_DIR[,FINETUNE_DIR]")
    parser.add_argument("--methods", default="gsnr,ifd,loss,length,random")
    parser.add_argument("--reading", choices=("auc", "final"), default="auc",
                        help="the fine-tune's held-out loss: area under the curve or final")
    args = parser.parse_args()
    print("| data | method | noise AUROC | - random | - IFD | contam. @10% | - random | "
          f"fine-tune {args.reading} loss @10% | - random | - IFD |")
    print("| --- " * 10 + "|")
    for spec in args.runs:
        name, _, dirs = spec.partition("=")
        noise_dir, _, finetune_dir = dirs.partition(",")
        for line in rows(name, Path(noise_dir), Path(finetune_dir) if finetune_dir else None,
                         args.methods.split(","), args.reading):
            print(line)


if __name__ == "__main__":
    main()
