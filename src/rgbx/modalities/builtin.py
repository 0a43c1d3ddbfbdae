"""The modalities rgbx ships with. Each is one :func:`register_modality` call."""

from __future__ import annotations

from rgbx.modalities.spec import MODALITIES, ModalitySpec, register_modality

RGB = register_modality(
    ModalitySpec(
        name="rgb",
        channels=3,
        description="colour camera, 8-bit PNG/JPEG, RGB order",
        encoding="png",
        scale=1 / 255,
        unit="intensity 0-1",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        photometric=("color_jitter", "gaussian_blur"),
        colormap="rgb",
        display_range=(0.0, 1.0),
    )
)

DEPTH = register_modality(
    ModalitySpec(
        name="depth",
        channels=1,
        description="metric depth; 16-bit PNG in millimetres or float .npy in metres; 0 = invalid",
        encoding="png",
        dtype="uint16",
        scale=0.001,
        unit="m",
        mean=(0.0,),
        std=(10.0,),
        invalid_value=0.0,
        photometric=("depth_noise", "depth_holes"),
        colormap="turbo",
        display_range=(0.0, 40.0),
    )
)

THERMAL = register_modality(
    ModalitySpec(
        name="thermal",
        channels=1,
        description="thermal camera, 8-bit PNG (relative temperature 0-255)",
        encoding="png",
        scale=1 / 255,
        unit="relative temperature 0-1",
        mean=(0.5,),
        std=(0.25,),
        photometric=("thermal_gain", "gaussian_noise"),
        colormap="inferno",
        display_range=(0.0, 1.0),
    )
)

LIDAR = register_modality(
    ModalitySpec(
        name="lidar",
        channels=1,
        description="LiDAR points projected into the image: sparse range in metres (16-bit PNG, mm); 0 = no return",
        encoding="png",
        dtype="uint16",
        scale=0.001,
        unit="m",
        mean=(0.0,),
        std=(20.0,),
        invalid_value=0.0,
        sparse=True,
        photometric=("point_dropout",),
        colormap="turbo",
        display_range=(0.0, 60.0),
    )
)

EVENT = register_modality(
    ModalitySpec(
        name="event",
        channels=2,
        description="event camera, stacked event counts per pixel: channel 0 positive, 1 negative polarity "
        "(2-channel 8-bit PNG)",
        encoding="png",
        scale=1.0,
        unit="events",
        mean=(0.0, 0.0),
        std=(2.0, 2.0),
        sparse=True,
        photometric=("event_dropout",),
        colormap="polarity",
        display_range=(0.0, 4.0),
    )
)

EVENT_IMAGE = register_modality(
    ModalitySpec(
        name="event_image",
        channels=3,
        description="event camera rendered as an 8-bit colour image (events as coloured dots on a plain "
        "background), read as it is stored: DeLiVER's event/ files as its code feeds them (the deliver loader's "
        "event_format=image)",
        encoding="png",
        scale=1 / 255,
        unit="rendered 0-1",
        mean=(0.0, 0.0, 0.0),  # DELIVER feeds it as the image / 255, without mean or std
        std=(1.0, 1.0, 1.0),
        sparse=True,  # dots: resampled with nearest neighbour, never blended
        colormap="rgb",
        display_range=(0.0, 1.0),
    )
)

HHA = register_modality(
    ModalitySpec(
        name="hha",
        channels=3,
        description="HHA encoding of depth (horizontal disparity, height above ground, angle with gravity), "
        "8-bit 3-channel PNG; computed from depth + intrinsics by rgbx.data.hha or read from disk",
        encoding="png",
        scale=1 / 255,
        unit="encoded 0-1",
        mean=(0.485, 0.456, 0.406),  # CMX / DFormer normalise HHA like RGB
        std=(0.229, 0.224, 0.225),
        photometric=("gaussian_noise",),
        colormap="rgb",
        display_range=(0.0, 1.0),
    )
)

AOLP = register_modality(
    ModalitySpec(
        name="aolp",
        channels=2,
        description="polarisation: angle of linear polarisation as (sin 2θ, cos 2θ), float .npy or decoded from "
        "the dataset's own encoding",
        encoding="npy",
        dtype="float32",
        scale=1.0,
        unit="sin/cos",
        mean=(0.0, 0.0),
        std=(0.5, 0.5),
        photometric=("gaussian_noise",),
        colormap="gray",
        display_range=(-1.0, 1.0),
    )
)

DOLP = register_modality(
    ModalitySpec(
        name="dolp",
        channels=1,
        description="polarisation: degree of linear polarisation, 0-1",
        encoding="npy",
        dtype="float32",
        scale=1.0,
        unit="0-1",
        mean=(0.2,),
        std=(0.2,),
        photometric=("gaussian_noise",),
        colormap="inferno",
        display_range=(0.0, 1.0),
    )
)

NIR = register_modality(
    ModalitySpec(
        name="nir",
        channels=1,
        description="near-infrared camera, 8-bit PNG",
        encoding="png",
        scale=1 / 255,
        unit="intensity 0-1",
        mean=(0.5,),
        std=(0.25,),
        photometric=("thermal_gain", "gaussian_noise"),
        colormap="gray",
        display_range=(0.0, 1.0),
    )
)

# the sensors rgbx itself defines; a model file states the spec of every other sensor it was trained on
BUILTIN_MODALITIES = frozenset(MODALITIES.names())
