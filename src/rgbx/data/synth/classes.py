"""The class taxonomy and capture conditions of the synthetic dataset.

Classes come in *confusable pairs* that only one or two sensors can tell apart (see the package docstring for the
full table):

- ``person`` / ``mannequin``: same geometry, clothing and skin colours from one distribution; a person is warm
  (and often walking, so it also moves in the event stream), a mannequin sits at ambient temperature.
- ``car`` / ``crate``: a car is a body box with a cabin box on top; half of the crates are stacks drawn from the
  same geometry distribution, all painted from the same paint distribution. Only the car's engine/hood and cabin
  are warm.
- ``crate`` (or ``person``) / ``painting``: a painting is an anamorphic street painting on the ground that shows,
  from the camera's point of view, exactly what a real crate or figure would look like, but depth, LiDAR and the
  parallax in the event stream see flat ground, and thermal sees the ground temperature.
- ``pole``: thin, often narrower than a LiDAR beam spacing; ``vegetation``, ``building``, ``ground`` and ``sky``
  make up the background.
"""

from __future__ import annotations

CLASSES: list[str] = [
    "ground",
    "building",
    "vegetation",
    "sky",
    "pole",
    "person",
    "mannequin",
    "car",
    "crate",
    "painting",
]

PALETTE: list[tuple[int, int, int]] = [
    (128, 64, 128),  # ground
    (70, 70, 70),  # building
    (107, 142, 35),  # vegetation
    (70, 130, 180),  # sky
    (153, 153, 153),  # pole
    (220, 20, 60),  # person
    (255, 170, 200),  # mannequin
    (0, 0, 142),  # car
    (190, 120, 40),  # crate
    (250, 220, 30),  # painting
]

GROUND, BUILDING, VEGETATION, SKY, POLE, PERSON, MANNEQUIN, CAR, CRATE, PAINTING = range(len(CLASSES))

IGNORE_INDEX = 255

CONDITIONS: tuple[str, ...] = ("day", "night", "fog", "glare", "motion_blur")

MODALITIES: tuple[str, ...] = ("rgb", "depth", "thermal", "lidar", "event")
