"""Run a trained checkpoint on point-cloud files of one's own (no dataset, no info files).

    python tools/infer.py --ckpt PATH --data-path FILE|DIR --out DIR [--ext .bin|.pcd.bin|.npy|.pcd]
        [--columns x,y,z,intensity[,time_lag]] [--device cpu|cuda] [--score-thr F] [--no-pictures]
        [--cfg-file CONFIG [--set key=value ...]] [--calib FILE|DIR [--image-size WxH]]

OpenPCDet's ``demo.py`` spellings work too (``--data_path``, ``--cfg_file``, ``--score_thr``, ...).

Input: one file, or every point file of a folder (sorted; with ``--ext`` only that kind). The column layout is
the file format's unless ``--columns`` declares it: KITTI ``.bin`` ``x,y,z,intensity``; nuScenes ``.pcd.bin``
``x,y,z,intensity,ring`` (the ring is dropped, the time lag of a single sweep is 0); ``.pcd`` its ``FIELDS``;
``.npy`` needs ``--columns``. The points must be in the LiDAR frame the model was trained in (nuScenes: x right,
y forward; KITTI: x forward, y left). The model's config comes from the checkpoint (``--cfg-file`` replaces it).

Output, per frame ``<stem>`` (the file name without its extension), in ``--out``:
  * ``<stem>.json``: boxes ``[x, y, z, dx, dy, dz, yaw(, vx, vy)]`` (LiDAR frame), scores, labels, class names,
    the input columns used and the channels the model read (detections scoring at least ``--score-thr``);
  * ``kitti_lidar/<stem>.txt``: the same boxes in KITTI's 16-column field order but in the LiDAR frame (h w l =
    dz dy dx, bottom centre, LiDAR yaw; truncated / occluded -1, alpha -10, 2D box 0 0 0 0); with ``--calib`` (a
    KITTI calib file for every frame, or a folder of ``<stem>.txt``) ``kitti/<stem>.txt`` instead: the official
    camera-frame result format, as ``tools/test.py`` writes it (``--image-size`` clips the 2D boxes);
  * ``<stem>_bev.png`` (matplotlib top view) and ``<stem>_render.png`` (open3d off-screen render, where the
    machine can render; see ``perception.viz.pictures``), unless ``--no-pictures``.

A bad argument, a missing or malformed file, or a checkpoint that does not fit ends the tool with one line
``infer.py: error: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, e.g. 1242x375, got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


def build_parser() -> argparse.ArgumentParser:
    from perception.cli import ToolParser
    from perception.engine.threads import add_threads_argument
    from perception.formats.points import POINT_FILE_EXTENSIONS

    p = ToolParser(prog="infer.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", type=Path, required=True, help="checkpoint of tools/train.py")
    p.add_argument(
        "--data-path", type=Path, required=True, metavar="FILE|DIR", help="a point file or a folder"
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--ext", choices=POINT_FILE_EXTENSIONS, help="in a folder, only files of this kind")
    p.add_argument("--columns", help="the input's column names, comma separated (default: the file format's)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda where available, else cpu)")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto: bf16 autocast on a CPU with AMX bf16, else fp32 (the choice is logged)",
    )
    p.add_argument(
        "--score-thr", type=float, default=0.3, help="keep detections scoring at least (default 0.3)"
    )
    p.add_argument("--no-pictures", action="store_true", help="write no BEV / render pictures")
    add_threads_argument(p)
    p.add_argument(
        "--cfg-file", type=Path, metavar="CONFIG", help="experiment YAML replacing the checkpoint's"
    )
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides of --cfg-file")
    p.add_argument(
        "--calib", type=Path, metavar="FILE|DIR", help="KITTI calib: write camera-frame kitti/*.txt"
    )
    p.add_argument("--image-size", type=_size, default=(1242, 375), help="with --calib: image WxH (1242x375)")
    p.add_argument("--view", choices=("chase", "bev"), default="chase", help="open3d render camera")
    return p


def find_files(data_path: Path, ext: str | None) -> list[Path]:
    """The point files to run on: ``data_path`` itself, or the folder's files of kind ``ext`` (any known)."""
    from perception.formats.points import POINT_FILE_EXTENSIONS, point_file_kind

    if data_path.is_file():
        kind = point_file_kind(data_path)
        if ext is not None and kind != ext:
            raise ValueError(f"--data-path {data_path} is a {kind} file but --ext says {ext}")
        return [data_path]
    if not data_path.is_dir():
        raise FileNotFoundError(f"--data-path {data_path} does not exist")
    kinds = (ext,) if ext is not None else POINT_FILE_EXTENSIONS
    files = []
    for f in sorted(data_path.iterdir()):
        if f.is_file():
            try:
                if point_file_kind(f) in kinds:
                    files.append(f)
            except ValueError:
                continue
    if not files:
        raise FileNotFoundError(f"--data-path {data_path} holds no {' / '.join(kinds)} file")
    return files


def _camera(calib: Path | None, stem: str, image_size: tuple[int, int]) -> Any:
    if calib is None:
        return None
    from perception.datasets.kitti_calib import read_calib_file
    from perception.inference_api.outputs import CameraInfo

    path = calib / f"{stem}.txt" if calib.is_dir() else calib
    if not path.is_file():
        raise FileNotFoundError(f"--calib: no calibration file {path}")
    w, h = image_size
    return CameraInfo(read_calib_file(path), (h, w))


def _pictures(result: Any, detector: Any, out: Path, stem: str, view: str, score_thr: float) -> list[Path]:
    import torch

    from perception.structures import Boxes3D, Sample
    from perception.viz.frames import lidar_axes
    from perception.viz.pictures import write_sample_pictures

    sample = Sample(
        token=stem,
        points=result.points,
        boxes=Boxes3D.empty(with_velocity=result.detections.boxes.tensor.shape[1] == 9),
        labels=torch.zeros(0, dtype=torch.int64),
        class_names=result.class_names,
    )
    pics = write_sample_pictures(
        sample,
        out,
        detector.config.data.point_cloud_range,
        detections=result.detections,
        view=view,
        stem=f"{stem}_",
        matplotlib_too=True,
        score_threshold=score_thr,
        frame=lidar_axes(detector.config.data.dataset),
        show_gt=False,
    )
    return pics.paths


def run(args: argparse.Namespace) -> int:
    import perception
    from perception.engine.logger import progress
    from perception.engine.threads import use_free_cores
    from perception.formats.points import POINT_FILE_EXTENSIONS
    from perception.inference_api.outputs import frame_stem, write_json, write_kitti_txt

    if args.set and args.cfg_file is None:
        raise ValueError("--set overrides --cfg-file: give --cfg-file CONFIG with it")
    print(f"threads: {use_free_cores(args.threads).reason}")
    files = find_files(args.data_path, args.ext)
    columns = None if args.columns is None else [c.strip() for c in args.columns.split(",")]
    detector = perception.load_detector(
        args.ckpt, args.device, config=args.cfg_file, overrides=args.set, precision=args.precision
    )
    args.out.mkdir(parents=True, exist_ok=True)
    total = 0
    for f in progress(files, total=len(files), desc="infer", enabled=len(files) > 1):
        stem = frame_stem(f, POINT_FILE_EXTENSIONS)
        result = detector.detect(f, columns=columns, token=stem).above(args.score_thr)
        total += len(result)
        write_json(args.out / f"{stem}.json", result, {"score_threshold": args.score_thr})
        camera = _camera(args.calib, stem, args.image_size)
        sub = "kitti_lidar" if camera is None else "kitti"
        write_kitti_txt(args.out / sub / f"{stem}.txt", result, camera)
        if not args.no_pictures:
            _pictures(result, detector, args.out, stem, args.view, args.score_thr)
    print(f"{len(files)} frame(s), {total} detection(s) scoring >= {args.score_thr}: {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0.0 <= args.score_thr <= 1.0:
        parser.error(f"--score-thr must lie in [0, 1], got {args.score_thr}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from perception.config import ConfigError

    try:
        return run(args)
    except (ConfigError, FileNotFoundError, ValueError, TypeError) as err:
        one_line = " ".join(str(err).split())  # torch's load errors span several lines
        print(f"infer.py: error: {one_line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
