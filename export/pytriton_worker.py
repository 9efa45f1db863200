"""Serve a Triton model repository's ONNX models with nvidia-pytriton (run as a script).

Started by :func:`anystep.export.triton_repo.serve_with_pytriton` in an interpreter that
has ``nvidia-pytriton``, ``onnxruntime`` and ``numpy<2`` (pytriton's pin), usually
``.venv-triton/bin/python``. It imports nothing from anystep, so it runs from its file
path in that separate environment::

    python pytriton_worker.py --repository REPO --model NAME [--model NAME2] \\
        --ready-file F --http-port P --grpc-port Q --metrics-port M

For each model it parses ``REPO/NAME/config.pbtxt`` with Triton's protobuf schema,
opens ``REPO/NAME/1/model.onnx`` in an ONNX Runtime session and binds a callable with the
same input/output names, dims, dtypes, ``max_batch_size`` and dynamic batching. Inputs
with ``reshape`` (``s``, ``t``: ``[B, 1]`` on the wire) are reshaped to
``[B, *reshape.shape]`` (``[B]``) before the session runs, as Triton does for the ONNX
Runtime backend. When the server is up it writes the endpoints as JSON to the ready file,
then serves until its stdin closes or it gets SIGTERM.

The Python backend stub that Triton starts links against libpython; under an interpreter
whose libpython is not on the loader path (pyenv builds), it fails with
``_recursion_count`` errors, so this script prepends ``sysconfig LIBDIR`` to
``LD_LIBRARY_PATH`` before starting Triton.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import sysconfig
import threading
from pathlib import Path

if (
    __name__ == "__main__"
):  # run by path: keep export/'s flat modules (common.py, cli.py, ...) off sys.path
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]

_NP_TYPES = {
    "TYPE_FP32": "float32",
    "TYPE_FP16": "float16",
    "TYPE_FP64": "float64",
    "TYPE_INT64": "int64",
}


def _fix_library_path() -> None:
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and Path(libdir).is_dir():
        cur = os.environ.get("LD_LIBRARY_PATH", "")
        if libdir not in cur.split(":"):
            os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{cur}" if cur else libdir


def _load_config(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    cfg = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(), cfg)
    return cfg


def _make_infer(session, cfg):
    import numpy as np
    from pytriton.decorators import batch

    reshape = {
        i.name: tuple(int(d) for d in i.reshape.shape) for i in cfg.input if i.HasField("reshape")
    }
    out_names = [o.name for o in cfg.output]

    @batch
    def infer(**inputs):
        feeds = {}
        for name, arr in inputs.items():
            if name in reshape:
                arr = arr.reshape((arr.shape[0], *reshape[name]))
            feeds[name] = np.ascontiguousarray(arr)
        outs = session.run(out_names, feeds)
        return dict(zip(out_names, outs))

    return infer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repository", required=True)
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--workspace", default=None)
    ap.add_argument("--http-port", type=int, default=8000)
    ap.add_argument("--grpc-port", type=int, default=8001)
    ap.add_argument("--metrics-port", type=int, default=8002)
    ap.add_argument(
        "--threads", type=int, default=2, help="ONNX Runtime intra-op threads per model"
    )
    args = ap.parse_args(argv)

    _fix_library_path()
    import numpy as np
    import onnxruntime as ort
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def watch_stdin() -> None:
        try:
            while sys.stdin.read(1024):
                pass
        except (OSError, ValueError):
            pass
        stop.set()

    repo = Path(args.repository)
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        metrics_address="127.0.0.1",
        metrics_port=args.metrics_port,
        exit_timeout_secs=3,
        log_verbose=0,
    )
    with Triton(config=config, workspace=args.workspace) as triton:
        for name in args.model:
            cfg = _load_config(repo / name / "config.pbtxt")
            if cfg.platform != "onnxruntime_onnx":
                raise SystemExit(
                    f"model {name}: platform {cfg.platform!r} cannot be served by pytriton here"
                )
            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            so.log_severity_level = 3
            onnx_file = cfg.default_model_filename or "model.onnx"
            session = ort.InferenceSession(
                str(repo / name / "1" / onnx_file),
                sess_options=so,
                providers=["CPUExecutionProvider"],
            )

            def spec(t):
                return Tensor(
                    name=t.name,
                    dtype=np.dtype(_NP_TYPES[model_config_name(t)]),
                    shape=tuple(t.dims),
                )

            db = cfg.dynamic_batching
            triton.bind(
                model_name=name,
                infer_func=_make_infer(session, cfg),
                inputs=[spec(i) for i in cfg.input],
                outputs=[spec(o) for o in cfg.output],
                config=ModelConfig(
                    max_batch_size=int(cfg.max_batch_size),
                    batcher=DynamicBatcher(
                        max_queue_delay_microseconds=int(db.max_queue_delay_microseconds),
                        preferred_batch_size=[int(b) for b in db.preferred_batch_size] or None,
                    ),
                ),
                strict=True,
            )
        triton.run()
        info = {
            "http": f"127.0.0.1:{args.http_port}",
            "grpc": f"127.0.0.1:{args.grpc_port}",
            "metrics": f"http://127.0.0.1:{args.metrics_port}/metrics",
            "models": list(args.model),
            "pid": os.getpid(),
        }
        tmp = Path(args.ready_file + ".tmp")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, args.ready_file)
        threading.Thread(target=watch_stdin, daemon=True).start()
        stop.wait()
    return 0


def model_config_name(t) -> str:
    """Triton ``data_type`` enum name of a config tensor (e.g. ``TYPE_FP32``)."""
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2.DataType.Name(t.data_type)


if __name__ == "__main__":
    sys.exit(main())
