"""Look at a dataset split with its ground truth and (optionally) saved detections or a checkpoint's predictions,
or at one point file.

    python tools/visualize.py --data CONFIG [--split val] [--dets FILE | --ckpt PATH] [--headless OUT_DIR]
                              [--set key=value ...]
    python tools/visualize.py --ckpt PATH [--split val] ...           (the checkpoint's own config and data)
    python tools/visualize.py --points FILE [--columns x,y,z,...] [--ckpt PATH] [--headless OUT_DIR]

``--ckpt``: the checkpoint's predictions on each sample (``perception.load_detector``; the model runs on the
sample as the dataset gives it). Without ``--data`` the checkpoint's own config says where the data is.
``--points FILE`` (``.bin`` / ``.pcd.bin`` / ``.npy`` / ``.pcd``, see ``tools/infer.py``): that file's points, no
dataset config needed; with ``--ckpt`` also the model's predictions on it (the points it saw, inside its range).

Interactive (default; needs a display): an open3d window that steps through the samples with the keyboard --
N / Right next, B / Left previous, G ground truth on/off, D detections on/off, C point colours
(height / intensity / time lag / uniform), Up / Down score threshold, Q quit (``perception.viz.viewer``).

Headless (``--headless OUT_DIR``): writes ``<token>_render.png`` per sample with open3d's off-screen renderer
(needs the Debian packages libusb-1.0-0, libvulkan1 and mesa-vulkan-drivers; no display). Where the renderer cannot
run, it logs why and writes ``<token>_bev.png`` (and ``<token>_cameras.png`` with ``data.use_cameras=true``)
with matplotlib instead. ``--matplotlib`` writes those in any case.

Detections (``--dets``):
  * nuScenes: the results JSON of the evaluation (``perception.evaluation.nuscenes_results.write_results_json``:
    global-frame boxes), moved back into each sample's LiDAR frame with the poses of the info file;
  * KITTI: the folder of result files ``<frame_id>.txt`` (camera frame), converted with each frame's calibration.
Ground truth is drawn in class colours; with detections (``--dets`` / ``--ckpt``) ground truth is white and the
detections are in class colours (``perception.viz.colours``). A legend beside the BEV picture names the classes
and the line styles (ground truth solid, detections dashed); its axes are named in the data set's LiDAR frame
(``perception.viz.frames``: nuScenes x right / y forward, KITTI x forward / y left).

The split's info file must exist: ``tools/create_data.py nuscenes|kitti --root DATA.ROOT ...``. A bad config or
``--set``, a missing info file, a truncated point file or malformed detections end the tool with one line
``visualize.py: error: ...`` on stderr and exit status 2 (as ``tools/train.py`` and ``tools/test.py``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any


def build_dataset(cfg: Any, split: str) -> Any:
    """The config's dataset (``val`` mode: ground truth, no augmentation) for ``split``."""
    data = cfg.data
    common = dict(
        class_names=data.class_names,
        grid=data.grid,
        use_cameras=data.use_cameras,
        mode="val",
    )
    if data.dataset == "nuscenes":
        from perception.datasets.nuscenes import NuScenesDataset, infos_path_for
        from perception.formats.nuscenes_points import sweep_chain

        path = infos_path_for(data.root, data.version, sweep_chain(data.max_sweeps, data.sweep_stride), split)
        _check_infos(path, f"tools/create_data.py nuscenes --root {data.root} --version {data.version} "
                     f"--max-sweeps {data.max_sweeps} --sweep-stride {data.sweep_stride}")  # fmt: skip
        return NuScenesDataset(
            infos_path=path, root=data.root, max_sweeps=data.max_sweeps, sweep_stride=data.sweep_stride,
            missing_sweeps=data.missing_sweeps, **common,
        )  # fmt: skip
    from perception.datasets.kitti import KittiDataset, infos_path_for

    path = infos_path_for(data.root, split)
    _check_infos(path, f"tools/create_data.py kitti --root {data.root}")
    return KittiDataset(infos_path=path, root=data.root, **common)


def _check_infos(path: Path, command: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"info file {path} not found; create it with: python {command}")


def load_detections(cfg: Any, dataset: Any, dets: Path) -> dict[str, Any]:
    """Detections by sample token, in each sample's LiDAR frame (see the module doc)."""
    from perception.viz.detections_io import load_kitti_results, load_nuscenes_results

    if cfg.data.dataset == "nuscenes":
        poses = {info.token: info.ego_to_global @ info.lidar_to_ego for info in dataset.infos}
        loaded = load_nuscenes_results(dets, poses, cfg.data.class_names)
    else:
        calibs = {info.frame_id: info.calib for info in dataset.infos}
        loaded = load_kitti_results(dets, calibs, cfg.data.class_names)
    loaded.log_summary(dets)
    return loaded.by_token


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, e.g. 960x720, got {text!r}") from None
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError(f"size must be at least 16x16, got {text!r}")
    return w, h


def main(argv: list[str] | None = None) -> int:
    from perception.cli import ToolParser  # OpenPCDet's --a_b spellings, --cfg_file
    from perception.config import ConfigError, add_config_args

    parser = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data",
        type=Path,
        metavar="CONFIG",
        help="experiment YAML (its data part); default: --ckpt's config",
    )
    parser.add_argument("--ckpt", type=Path, help="checkpoint: draw its predictions")
    parser.add_argument("--points", type=Path, metavar="FILE", help="draw one point file (no dataset)")
    parser.add_argument("--columns", help="--points: the file's column names, comma separated")
    parser.add_argument("--device", help="--ckpt: cpu, cuda, ... (default: cuda where available)")
    add_config_args(parser, config_positional=False)
    parser.add_argument(
        "--split", default="val", choices=("train", "val"), help="dataset split (default val)"
    )
    parser.add_argument(
        "--dets", type=Path, help="nuScenes results JSON, or a folder of KITTI result .txt files"
    )
    parser.add_argument(
        "--headless", type=Path, metavar="OUT_DIR", help="write PNG files instead of a window"
    )
    parser.add_argument("--start", type=int, default=0, help="first sample index (default 0)")
    parser.add_argument("--limit", type=int, default=None, help="headless: at most this many samples")
    parser.add_argument(
        "--view", choices=("chase", "bev"), default="chase", help="headless camera (default chase)"
    )
    parser.add_argument(
        "--size", type=_size, default=(960, 720), help="picture / window size WxH (default 960x720)"
    )
    parser.add_argument(
        "--score-threshold", type=float, default=0.3, help="hide detections below (default 0.3)"
    )
    parser.add_argument(
        "--colour-by", choices=("height", "intensity", "time_lag", "uniform"), default="height"
    )
    parser.add_argument(
        "--matplotlib", action="store_true", help="headless: also write the BEV / camera plots"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not 0.0 <= args.score_threshold <= 1.0:
        parser.error(f"--score-threshold must lie in [0, 1], got {args.score_threshold}")
    if args.points is not None and (args.data is not None or args.dets is not None):
        parser.error("--points draws one file: it takes no --data / --dets")
    if args.points is None and args.data is None and args.ckpt is None:
        parser.error("give --data CONFIG, --ckpt PATH or --points FILE")
    if args.dets is not None and args.ckpt is not None:
        parser.error("--dets and --ckpt both give detections: choose one")
    if args.columns is not None and args.points is None:
        parser.error("--columns describes --points FILE")

    try:
        if args.points is not None:
            return _run_points(args)
        return _run(parser, args)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"visualize.py: error: {err}", file=sys.stderr)
        return 2


def _predict(detector: Any, sample: Any) -> Any:
    """The detector's detections on a dataset sample (on the CPU)."""
    from perception.structures import Batch

    batch = Batch.collate([sample], image_norm=detector.config.data.image_norm)  # fusion models: float images
    (det,) = detector.model.predict(batch.to(detector.device))
    return det.to("cpu")


def _show(args: argparse.Namespace, samples: Any, dets: dict[str, Any], point_range: Any) -> int:
    """The interactive viewer over ``samples`` (needs a display)."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        print(
            "visualize.py: error: no display (DISPLAY / WAYLAND_DISPLAY unset): use --headless OUT_DIR",
            file=sys.stderr,
        )
        return 2
    from perception.viz.viewer import SceneSource, Viewer

    viewer = Viewer(
        SceneSource(samples, dets),
        point_range,
        size=args.size,
        score_threshold=args.score_threshold,
        colour_by=args.colour_by,
    )
    viewer.run()
    return 0


def _run_points(args: argparse.Namespace) -> int:
    """``--points FILE``: the file's points (and ``--ckpt``'s predictions on them) as one sample."""
    import numpy as np
    import torch

    from perception.formats.points import drop_nonfinite, point_file_kind, read_point_file
    from perception.inference_api.columns import DEFAULT_COLUMNS, check_columns
    from perception.structures import Boxes3D, Points, Sample

    token = args.points.name[: -len(point_file_kind(args.points))]
    columns = None if args.columns is None else [c.strip() for c in args.columns.split(",")]
    frame = None
    if args.ckpt is not None:
        import perception
        from perception.viz.frames import lidar_axes

        detector = perception.load_detector(args.ckpt, args.device)
        result = detector.detect(args.points, columns=columns, token=token)
        points, class_names, dets = result.points, result.class_names, {token: result.detections}
        point_range = detector.config.data.point_cloud_range
        frame = lidar_axes(detector.config.data.dataset)
    else:
        f = read_point_file(args.points)
        cols = columns if columns is not None else (f.columns or DEFAULT_COLUMNS)
        cols = check_columns(cols, f.points.shape[1], str(args.points))
        order = [cols.index(c) for c in ("x", "y", "z")] + [
            i for i, c in enumerate(cols) if c not in ("x", "y", "z")
        ]
        pts, _ = drop_nonfinite(f.points[:, order], str(args.points))
        points = Points(torch.from_numpy(np.ascontiguousarray(pts)), tuple(cols[i] for i in order))
        class_names, dets = ("object",), {}
        lo = np.floor(pts[:, :3].min(0)) if len(pts) else np.full(3, -1.0)
        hi = np.ceil(pts[:, :3].max(0)) + 1 if len(pts) else np.full(3, 1.0)
        point_range = (*lo.tolist(), *hi.tolist())
    sample = Sample(token, points, Boxes3D.empty(), torch.zeros(0, dtype=torch.int64), class_names)
    if args.headless is None:
        return _show(args, [sample], dets, point_range)
    from perception.viz.pictures import write_sample_pictures

    pics = write_sample_pictures(
        sample, args.headless, point_range, detections=dets.get(token), view=args.view, size=args.size,
        stem=f"{token}_", matplotlib_too=args.matplotlib, score_threshold=args.score_threshold,
        colour_by=args.colour_by, show_gt=False, frame=frame,
    )  # fmt: skip
    print(f"{token}: " + ", ".join(str(p) for p in pics.paths), flush=True)
    return 0


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from perception.config import load_config
    from perception.viz.frames import lidar_axes

    detector = None
    if args.ckpt is not None:
        import perception

        detector = perception.load_detector(args.ckpt, args.device)
    if args.data is not None:
        cfg = load_config(args.data, args.set)
    else:
        assert detector is not None
        if args.set:
            parser.error("--set overrides --data CONFIG; give --data with it")
        cfg = detector.config
    dataset = build_dataset(cfg, args.split)
    if len(dataset) == 0:
        parser.error(f"the {args.split} split has no samples")
    if not 0 <= args.start < len(dataset):
        parser.error(f"--start must lie in [0, {len(dataset)}), got {args.start}")
    dets = load_detections(cfg, dataset, args.dets) if args.dets is not None else {}
    point_range = cfg.data.point_cloud_range

    if args.headless is not None:
        from perception.viz.pictures import write_sample_pictures

        stop = len(dataset) if args.limit is None else min(len(dataset), args.start + max(args.limit, 0))
        for i in range(args.start, stop):
            sample = dataset[i]
            if detector is not None:
                dets[sample.token] = _predict(detector, sample)
            pics = write_sample_pictures(
                sample,
                args.headless,
                point_range,
                frame=lidar_axes(cfg.data.dataset),
                detections=dets.get(sample.token),
                view=args.view,
                size=args.size,
                stem=f"{sample.token}_",
                matplotlib_too=args.matplotlib,
                score_threshold=args.score_threshold,
                colour_by=args.colour_by,
            )
            print(
                f"[{i + 1}/{len(dataset)}] {sample.token}: " + ", ".join(str(p) for p in pics.paths),
                flush=True,
            )
        return 0

    class _From:  # the dataset seen from --start on
        def __len__(self) -> int:
            return len(dataset) - args.start

        def __getitem__(self, i: int) -> Any:
            return dataset[args.start + i]

    if detector is not None and (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        from perception.engine.inference import run_inference

        dets = run_inference(detector.model, _From(), device=detector.device)  # type: ignore[arg-type]
    return _show(args, _From(), dets, point_range)


if __name__ == "__main__":
    raise SystemExit(main())
