"""rgbx-synth: the built-in procedural multi-modal segmentation dataset.

Street scenes of analytic primitives (ground plane, buildings, trees, bushes, poles, figures, cars, crates) are
ray cast with a pinhole camera (vectorised numpy, no external renderer) into RGB, depth, thermal, LiDAR and event
images plus a label, in about 60 ms per 240×320 sample on one CPU core. Everything is drawn from
``(seed, index)`` alone.

Design: each sensor must be needed
-----------------------------------
The classes form confusable pairs whose members share the distributions every other sensor sees:

==============  ==========================================================================================
class           what tells it apart
==============  ==========================================================================================
ground          road (asphalt, lane dashes) and tiled sidewalks; flat in depth / LiDAR
building        large boxes with window grids (glass darker and colder than the walls)
vegetation      trees (trunk + crown) and bushes; green noise textures, cooler than the air, patchy in thermal
sky             no depth / LiDAR return, coldest in thermal
pole            thin cylinders (3.5-12 cm): a few pixels wide, often missed by LiDAR beams
person          **warm** in thermal (clothes 35-75 % of the way from air to 34 °C, skin ~34 °C); 60 % walk
                (5-15 cm between the event renders, which the event counts barely show: see **event** below).
                RGB and shape: identical to mannequins
mannequin       same geometry / clothing / skin colour distributions as persons; **at air temperature**
car             body + cabin boxes in the same paint distribution as crates; **hot engine end and warm cabin**
crate           single boxes, or stacks drawn from the car geometry distribution; at air temperature
painting        anamorphic street painting of a crate or a figure: **looks like a real object in RGB from the
                camera**, but depth, LiDAR and thermal see flat ground, and the event camera sees it stick to
                the ground under motion (parallax)
==============  ==========================================================================================

What each modality reveals (and loses):

- **rgb**: colour and texture; the only sensor that sees a painting at all (vs. bare ground), but cannot tell
  it from a crate, a mannequin from a person, or a crate from a car. Per-sample condition (``CONDITIONS``):
  ``day``; ``night`` (very dark and noisy, at most three street lamps — nearly useless); ``fog`` (far objects
  fade into grey airlight); ``glare`` (over-exposure and a large bloom saturate big regions); ``motion_blur``
  (horizontal smear).
- **depth** (mm, 0 = invalid): geometry up to 30-45 m, with distance² noise and holes; paintings are flat,
  crates are not. Unaffected by light and fog.
- **thermal** (0-255 relative temperature): persons, cars' engines and cabins are warm; mannequins, crates and
  paintings are not. Blurred and noisy; unaffected by light and fog.
- **lidar** (mm, 0 = no return): 32-64 beam rows, a point every 2-3.5 pixels along a row; accurate range up to
  65.5 m (what 16-bit millimetres hold; farther returns are dropped) but sparse (thin poles are often missed);
  unaffected by light and fog.
- **event** (positive / negative counts): log-brightness changes under a small camera motion and the objects'
  own motion; high dynamic range, so it keeps the scene's edges at night and under glare (and motion blur does
  not touch it), but fog (15-60 m visibility, flat light, bright airlight) wipes out nearly all of it, near
  objects included: over 40 scenes the pixels with any event drop from 19 % (day) to 2 % (fog), from 13 % to
  3 % within 6 m. The camera's own motion already moves every edge, so object motion barely shows in the
  counts: moving cars carry more events than parked ones (on 46 % vs 28 % of their pixels), but walking persons
  look like standing persons and mannequins (3.5 vs 3.2 vs 3.0 events per pixel, on 55 % vs 48 % vs 57 % of
  their pixels). A painting's edges move like the ground they lie on (parallax), not like an upright object's.

Label: class index per pixel; 255 (ignore) only for the ground in a thin band at the horizon (> 250 m).

API: :func:`render_sample` renders one sample in memory; :func:`generate` writes a dataset folder in the rgbx
user-dataset format (``docs/dataset-format.md``).

Modules: ``classes`` (taxonomy, palette, conditions), ``scene`` (random scene description), ``textures``
(procedural textures), ``render`` (ray casting), ``sensors`` (modality models), ``sample`` (one sample),
``writer`` (files, multiprocessing).
"""

from rgbx.data.synth.classes import CLASSES, CONDITIONS, IGNORE_INDEX, MODALITIES, PALETTE
from rgbx.data.synth.sample import render_sample
from rgbx.data.synth.writer import DATASET_NAME, GENERATOR_VERSION, generate, sample_id, sample_index

__all__ = [
    "CLASSES",
    "CONDITIONS",
    "DATASET_NAME",
    "GENERATOR_VERSION",
    "IGNORE_INDEX",
    "MODALITIES",
    "PALETTE",
    "generate",
    "render_sample",
    "sample_id",
    "sample_index",
]
