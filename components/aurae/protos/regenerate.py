"""Regenerate the committed Python stubs from the .proto files beside this module.

    python -m components.aurae.protos.regenerate          # rewrite the stubs
    python -m components.aurae.protos.regenerate --check  # exit 1 if they are stale

Needs grpcio-tools (a development tool only; running teebus needs grpcio and protobuf).

The protos import each other as Aurae's did (`import "meta.proto";`), so protoc emits top-level
imports (`import meta_pb2 as meta__pb2`) that only work with this folder on sys.path. Rather than
change the protos' import paths (which would also change the file names registered in the
descriptor pool and seen through server reflection), this script rewrites those imports of sibling
stubs into package-relative ones (`from . import meta_pb2 as meta__pb2`) in the .py and .pyi files.
It generates into a temporary folder and replaces the stubs only when protoc succeeded.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def protos() -> list[Path]:
    """The .proto files of this package, in a stable order."""
    return sorted(HERE.glob("*.proto"))


def relative_imports(text: str, modules: set[str]) -> str:
    """Turn `import meta_pb2 as x` / `from meta_pb2 import y` of sibling stubs into relative imports."""
    names = "|".join(sorted(re.escape(m) for m in modules))
    text = re.sub(rf"^import ({names}) as (\w+)$", r"from . import \1 as \2", text, flags=re.M)
    return re.sub(rf"^from ({names}) import ", r"from .\1 import ", text, flags=re.M)


def generate(out: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) into `out` and fix the imports; returns the files written."""
    from grpc_tools import protoc  # imported here: a tool dependency, not a runtime one
    import grpc_tools

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = ["grpc_tools.protoc", f"-I{HERE}", f"-I{well_known}", f"--python_out={out}",
            f"--pyi_out={out}", f"--grpc_python_out={out}", *(p.name for p in protos())]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; the committed stubs are unchanged")
    modules = {f"{p.stem}_pb2" for p in protos()}
    written = sorted(f for f in out.iterdir() if f.name.endswith(SUFFIXES))
    for f in written:
        f.write_text(relative_imports(f.read_text(), modules))
    return written


def main(argv: list[str] | None = None) -> int:
    """Regenerate (or with --check, compare) the stubs; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale or missing stubs")
    check = parser.parse_args(argv).check
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = [f.name for f in fresh
                 if not (HERE / f.name).exists() or (HERE / f.name).read_bytes() != f.read_bytes()]
        if check:
            for name in stale:
                print(f"stale: {name}", file=sys.stderr)
            return 1 if stale else 0
        for f in fresh:
            shutil.copyfile(f, HERE / f.name)
    print(f"wrote {len(fresh)} files into {HERE} ({len(stale)} changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
