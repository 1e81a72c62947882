"""Generate the Python code and .pyi stubs for moorage.proto.

`python -m protos.generate` writes them beside the .proto; `generate(out_dir)` is what the freshness test
calls to compare a fresh generation with what is committed.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
PROTO = HERE / "moorage.proto"
OUTPUTS = ("moorage_pb2.py", "moorage_pb2.pyi", "moorage_pb2_grpc.py", "moorage_pb2_grpc.pyi")


def generate(out_dir: Path) -> None:
    include = Path(protoc.__file__).resolve().parent / "_proto"
    bindir = Path(sys.executable).parent  # the plugins are console scripts of mypy-protobuf
    args = [
        "grpc_tools.protoc",
        f"-I{HERE}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        str(PROTO),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # protoc writes `import moorage_pb2`; the package lives at `protos.`.
    grpc_py = out_dir / "moorage_pb2_grpc.py"
    grpc_py.write_text(
        re.sub(
            r"^import moorage_pb2 as", "from protos import moorage_pb2 as", grpc_py.read_text(), flags=re.M
        )
    )
    grpc_pyi = out_dir / "moorage_pb2_grpc.pyi"
    grpc_pyi.write_text(
        re.sub(
            r"^import moorage_pb2 as _moorage_pb2$",
            "from protos import moorage_pb2 as _moorage_pb2",
            grpc_pyi.read_text(),
            flags=re.M,
        )
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        for name in OUTPUTS:
            (HERE / name).write_bytes((Path(tmp) / name).read_bytes())
    print(f"generated {', '.join(OUTPUTS)} in {HERE}", file=sys.stderr)


if __name__ == "__main__":
    main()
