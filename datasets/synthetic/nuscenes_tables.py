"""Static nuScenes v1.0 tables (category, attribute, visibility) and deterministic tokens."""

from __future__ import annotations

import hashlib

from nuscenes.utils import splits

from .params import NUSCENES_SPLIT_SIZES

#: nuScenes v1.0 category names, with short descriptions written for this project.
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("human.pedestrian.adult", "Adult walking, standing or sitting."),
    ("human.pedestrian.child", "Child (shorter than about 1.5 m)."),
    ("human.pedestrian.wheelchair", "Person in a wheelchair."),
    ("human.pedestrian.stroller", "Stroller or pram."),
    ("human.pedestrian.personal_mobility", "Scooter, skateboard, segway and similar."),
    ("human.pedestrian.police_officer", "Police officer."),
    ("human.pedestrian.construction_worker", "Person working on a construction site."),
    ("animal", "Animal."),
    ("vehicle.car", "Passenger car, van, SUV or pickup."),
    ("vehicle.motorcycle", "Motorcycle or motor scooter."),
    ("vehicle.bicycle", "Bicycle."),
    ("vehicle.bus.bendy", "Articulated bus."),
    ("vehicle.bus.rigid", "Single-body bus."),
    ("vehicle.truck", "Vehicle built to carry goods."),
    ("vehicle.construction", "Vehicle for construction work (crane, excavator, loader)."),
    ("vehicle.emergency.ambulance", "Ambulance."),
    ("vehicle.emergency.police", "Police car or motorcycle."),
    ("vehicle.trailer", "Trailer pulled by another vehicle."),
    ("movable_object.barrier", "Temporary road barrier."),
    ("movable_object.trafficcone", "Traffic cone."),
    ("movable_object.pushable_pullable", "Cart, bin or dolly moved by hand."),
    ("movable_object.debris", "Debris on the road."),
    ("static_object.bicycle_rack", "Area or rack where bicycles are parked."),
)

#: nuScenes attribute names with descriptions written for this project.
ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("vehicle.moving", "Vehicle is driving."),
    ("vehicle.stopped", "Vehicle is temporarily stopped in traffic, driver inside."),
    ("vehicle.parked", "Vehicle is parked."),
    ("cycle.with_rider", "Somebody rides the bicycle or motorcycle."),
    ("cycle.without_rider", "Nobody rides the bicycle or motorcycle."),
    ("pedestrian.sitting_lying_down", "Pedestrian is sitting or lying down."),
    ("pedestrian.standing", "Pedestrian is standing."),
    ("pedestrian.moving", "Pedestrian is walking or running."),
)

#: (token, level, description) as in nuScenes: fraction of the object visible.
VISIBILITY: tuple[tuple[str, str, str], ...] = (
    ("1", "v0-40", "visibility of whole object is between 0 and 40%"),
    ("2", "v40-60", "visibility of whole object is between 40 and 60%"),
    ("3", "v60-80", "visibility of whole object is between 60 and 80%"),
    ("4", "v80-100", "visibility of whole object is between 80 and 100%"),
)


def token(*parts: object) -> str:
    """A deterministic 32-hex-character token from ``parts``."""
    return hashlib.md5("|".join(str(p) for p in parts).encode()).hexdigest()


def visibility_token(fraction: float) -> str:
    """nuScenes visibility token for a visible fraction in [0, 1]."""
    return "1" if fraction < 0.4 else "2" if fraction < 0.6 else "3" if fraction < 0.8 else "4"


def scene_names(version: str, num_scenes: int) -> list[tuple[str, str]]:
    """``(scene name, split)`` pairs from the devkit's split lists, always with train and val scenes.

    A quarter of the scenes (at least one) are val scenes (``mini_val`` / ``val``), the rest train scenes.
    """
    n_train_avail, n_val_avail = NUSCENES_SPLIT_SIZES[version]
    if not 2 <= num_scenes <= n_train_avail + n_val_avail:
        raise ValueError(
            f"num_scenes must be in [2, {n_train_avail + n_val_avail}] for {version}, got {num_scenes}"
        )
    n_val = min(n_val_avail, max(1, num_scenes // 4))
    n_val = max(n_val, num_scenes - n_train_avail)
    n_train = num_scenes - n_val
    if version == "v1.0-mini":
        train, val, names = splits.mini_train, splits.mini_val, ("mini_train", "mini_val")
    else:
        train, val, names = splits.train, splits.val, ("train", "val")
    pairs = [(n, names[0]) for n in train[:n_train]] + [(n, names[1]) for n in val[:n_val]]
    return sorted(pairs)
