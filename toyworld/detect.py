"""Pixel analysis for the planted model: find objects and grade their colour, shape and texture.

Only pixels are used. Steps for one image:
0. resize so the shorter side is 224 pixels (aspect ratio kept);
1. background colour = median of the border pixels; foreground = pixels far from it;
2. objects = connected components of the foreground (scipy.ndimage);
3. per object: colour memberships from a nearest-prototype pixel classifier (the palette),
   texture from how much "ink" (the lighter texture colour) it holds and how the ink is laid
   out (stripes are oriented, dots are sparse, checks are dense), shape from rotation-invariant
   geometry (solidity, fill of the minimum-area rectangle, aspect, radial-profile harmonics)
   scored against per-shape Gaussian prototypes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from toyworld.vocabulary import COLOURS, SHAPES
from toyworld.world import INK_RGB, OBJECT_RGB

ANALYSIS_SIZE = 224
FOREGROUND_DISTANCE = 42.0
"""RGB distance from the background colour above which a pixel is foreground."""
MIN_OBJECT_AREA = 40
"""Components smaller than this many pixels (shorter side 224) are noise, not objects."""
UNKNOWN_COLOUR_DISTANCE = 80.0
RADIAL_BINS = 48
SHAPE_FEATURES = ("solidity", "rect_fill", "aspect", "h1", "h2", "h3", "h4", "h5", "h6")

# Per-shape Gaussian prototypes over SHAPE_FEATURES (mean, std), fitted on rendered scenes by
# toyworld.calibrate.fit_shape_prototypes; a test checks they still match the renderer.
SHAPE_PROTOTYPES: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "circle": (
        (0.977, 0.783, 0.998, 0.001, 0.003, 0.002, 0.002, 0.002, 0.002),
        (0.012, 0.012, 0.012, 0.012, 0.012, 0.012, 0.012, 0.012, 0.012),
    ),
    "square": (
        (0.953, 0.941, 0.995, 0.002, 0.004, 0.003, 0.15, 0.003, 0.003),
        (0.022, 0.032, 0.012, 0.012, 0.012, 0.012, 0.012, 0.012, 0.012),
    ),
    "triangle": (
        (0.945, 0.524, 0.875, 0.004, 0.006, 0.294, 0.004, 0.004, 0.106),
        (0.023, 0.015, 0.014, 0.012, 0.012, 0.012, 0.012, 0.012, 0.012),
    ),
    "star": (
        (0.658, 0.468, 0.958, 0.004, 0.008, 0.009, 0.009, 0.288, 0.007),
        (0.021, 0.023, 0.015, 0.012, 0.012, 0.012, 0.012, 0.012, 0.012),
    ),
    "cross": (
        (0.687, 0.617, 0.991, 0.005, 0.006, 0.005, 0.36, 0.007, 0.007),
        (0.012, 0.012, 0.012, 0.012, 0.012, 0.012, 0.012, 0.012, 0.012),
    ),
    "hexagon": (
        (0.969, 0.744, 0.881, 0.002, 0.006, 0.003, 0.004, 0.003, 0.062),
        (0.014, 0.012, 0.017, 0.012, 0.012, 0.012, 0.012, 0.012, 0.012),
    ),
    "diamond": (
        (0.956, 0.695, 0.649, 0.003, 0.204, 0.005, 0.169, 0.004, 0.051),
        (0.021, 0.015, 0.019, 0.012, 0.012, 0.012, 0.012, 0.012, 0.012),
    ),
    "heart": (
        (0.91, 0.71, 0.99, 0.029, 0.147, 0.194, 0.005, 0.059, 0.005),
        (0.012, 0.012, 0.012, 0.012, 0.012, 0.012, 0.012, 0.012, 0.012),
    ),
}
SHAPE_TEMPERATURE = 4.0
"""Divides the Gaussian log-likelihoods: higher gives softer shape probabilities."""
SHAPE_REJECT_LOGIT = -10.0
"""Logit of "no known shape": blobs far from every prototype get little shape mass."""


@dataclass(frozen=True)
class DetectedObject:
    """One foreground component and its graded attributes (memberships in [0, 1])."""

    area: float
    """Pixel area as a fraction of the square of the image's shorter side."""
    radius: float
    """Farthest boundary point from the centroid, as a fraction of the image's shorter side."""
    centre: tuple[float, float]
    colour: np.ndarray
    """Membership per colour in ``COLOURS`` order (sums to at most 1)."""
    shape: np.ndarray
    """Probability per shape in ``SHAPES`` order (sums to at most 1; the rest is "no shape")."""
    texture: np.ndarray
    """Membership per texture in ``TEXTURES`` order (sums to 1)."""
    features: dict[str, float]


@dataclass(frozen=True)
class ImageAnalysis:
    """Everything the planted units read from one image."""

    objects: tuple[DetectedObject, ...]
    background_rgb: tuple[float, float, float]
    foreground_fraction: float


def _sigmoid(x: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass(frozen=True)
class PixelClassifier:
    """Nearest-prototype colour classes via a 32x32x32 lookup table.

    Classes ``0..9`` are the object colours, ``10..19`` their texture inks, ``20`` unknown.
    """

    table: np.ndarray

    @classmethod
    def build(cls) -> PixelClassifier:
        """Build the lookup table from the palette."""
        prototypes = np.array(
            [OBJECT_RGB[c] for c in COLOURS] + [INK_RGB[c] for c in COLOURS], dtype=np.float32
        )
        levels = np.arange(32, dtype=np.float32) * 8 + 3.5
        grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1)
        distances = np.linalg.norm(grid[..., None, :] - prototypes, axis=-1)
        table = distances.argmin(axis=-1).astype(np.uint8)
        table[distances.min(axis=-1) > UNKNOWN_COLOUR_DISTANCE] = 2 * len(COLOURS)
        table.setflags(write=False)
        return cls(table=table)

    def classify(self, pixels: np.ndarray) -> np.ndarray:
        """Class index per pixel of a ``[..., 3]`` uint8 array."""
        q = pixels >> 3
        return self.table[q[..., 0], q[..., 1], q[..., 2]]


def to_analysis_array(image: Image.Image) -> np.ndarray:
    """A PIL image as a uint8 RGB array whose shorter side is 224 (aspect ratio kept)."""
    rgb = image.convert("RGB")
    width, height = rgb.size
    scale = ANALYSIS_SIZE / min(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size != rgb.size:
        rgb = rgb.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(rgb, dtype=np.uint8)


def _background(pixels: np.ndarray) -> np.ndarray:
    strips = (pixels[:2], pixels[-2:], pixels[:, :2], pixels[:, -2:])
    border = np.concatenate([strip.reshape(-1, 3) for strip in strips])
    return np.median(border, axis=0)


def _min_area_rectangle(hull_points: np.ndarray) -> tuple[float, float]:
    """Area and short/long aspect of the minimum-area bounding rectangle of a convex polygon."""
    edges = np.diff(np.vstack([hull_points, hull_points[:1]]), axis=0)
    angles = np.arctan2(edges[:, 1], edges[:, 0])
    cos, sin = np.cos(angles), np.sin(angles)
    u = hull_points[:, 0][None] * cos[:, None] + hull_points[:, 1][None] * sin[:, None]
    v = -hull_points[:, 0][None] * sin[:, None] + hull_points[:, 1][None] * cos[:, None]
    width = u.max(axis=1) - u.min(axis=1)
    height = v.max(axis=1) - v.min(axis=1)
    areas = width * height
    best = int(areas.argmin())
    short, long = sorted((width[best], height[best]))
    return float(areas[best]), float(short / max(long, 1e-9))


def shape_features(mask: np.ndarray) -> tuple[dict[str, float], float]:
    """Rotation-invariant shape features of a filled binary mask, and its radius in pixels."""
    area = float(mask.sum())
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    edge = mask & ~ndimage.binary_erosion(mask)
    by, bx = np.nonzero(edge)
    corners = np.concatenate(
        [np.stack([bx + dx, by + dy], axis=1) for dx in (-0.5, 0.5) for dy in (-0.5, 0.5)]
    ).astype(np.float64)
    try:
        hull = ConvexHull(corners)
        hull_points = corners[hull.vertices]
        hull_area = float(hull.volume)
    except QhullError:
        hull_points, hull_area = corners, area
    rect_area, aspect = _min_area_rectangle(hull_points)
    dx, dy = bx + 0.5 - (cx + 0.5), by + 0.5 - (cy + 0.5)
    radii = np.hypot(dx, dy) + 0.5
    bins = ((np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * RADIAL_BINS).astype(int) % RADIAL_BINS
    profile = np.zeros(RADIAL_BINS)
    np.maximum.at(profile, bins, radii)
    if (profile == 0).any():  # fill empty angular bins from their neighbours (tiny objects)
        filled = np.nonzero(profile)[0]
        profile = np.interp(np.arange(RADIAL_BINS), filled, profile[filled], period=RADIAL_BINS)
    spectrum = np.abs(np.fft.rfft(profile / profile.mean())) * 2 / RADIAL_BINS
    features = {
        "solidity": area / max(hull_area, 1.0),
        "rect_fill": area / max(rect_area, 1.0),
        "aspect": aspect,
        **{f"h{k}": float(spectrum[k]) for k in range(1, 7)},
    }
    return features, float(radii.max())


def texture_features(classes: np.ndarray, interior: np.ndarray) -> dict[str, float]:
    """Ink fraction and stripe coherence of an object's interior pixels."""
    ink = (classes >= len(COLOURS)) & (classes < 2 * len(COLOURS)) & interior
    main = (classes < len(COLOURS)) & interior
    known = float(ink.sum() + main.sum())
    fraction = float(ink.sum()) / known if known else 0.0
    coherence = 0.0
    inner = ndimage.binary_erosion(interior, iterations=2)
    if fraction > 0.03 and inner.sum() >= 20:
        indicator = ndimage.uniform_filter(ink.astype(np.float32), size=3)
        gx = ndimage.sobel(indicator, axis=1)[inner]
        gy = ndimage.sobel(indicator, axis=0)[inner]
        jxx, jyy, jxy = float(gx @ gx), float(gy @ gy), float(gx @ gy)
        trace = jxx + jyy
        if trace > 1e-6:
            coherence = float(np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / trace)
    return {"ink_fraction": fraction, "coherence": coherence}


def texture_memberships(features: dict[str, float]) -> np.ndarray:
    """Graded plain / striped / dotted / checkered memberships from texture features."""
    fraction, coherence = features["ink_fraction"], features["coherence"]
    textured = float(_sigmoid((fraction - 0.12) / 0.025))
    striped = float(_sigmoid((coherence - 0.5) / 0.07))
    dense = float(_sigmoid((fraction - 0.4) / 0.035))
    return np.array(
        [
            1.0 - textured,
            textured * striped,
            textured * (1.0 - striped) * (1.0 - dense),
            textured * (1.0 - striped) * dense,
        ]
    )


def shape_memberships(features: dict[str, float]) -> np.ndarray:
    """Probability per shape from Gaussian prototypes; mass is left over for "no known shape"."""
    x = np.array([features[name] for name in SHAPE_FEATURES])
    logits = []
    for shape in SHAPES:
        mean, std = SHAPE_PROTOTYPES[shape]
        z = (x - np.asarray(mean)) / np.asarray(std)
        logits.append(-0.5 * float(z @ z) / SHAPE_TEMPERATURE)
    logits_arr = np.array([*logits, SHAPE_REJECT_LOGIT])
    weights = np.exp(logits_arr - logits_arr.max())
    return (weights / weights.sum())[: len(SHAPES)]


def analyse_pixels(pixels: np.ndarray, classifier: PixelClassifier) -> ImageAnalysis:
    """Detect and grade the objects in an ``[h, w, 3]`` uint8 image (shorter side 224)."""
    background = _background(pixels)
    distance = np.linalg.norm(pixels.astype(np.float32) - background.astype(np.float32), axis=-1)
    foreground = ndimage.binary_opening(distance > FOREGROUND_DISTANCE)
    labels, _ = ndimage.label(foreground, structure=np.ones((3, 3), dtype=bool))
    interior_all = ndimage.binary_erosion(foreground)
    classes_all = classifier.classify(pixels)
    side = float(min(pixels.shape[:2]))
    objects: list[DetectedObject] = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        mask = labels[box] == index
        area = int(mask.sum())
        if area < MIN_OBJECT_AREA:
            continue
        mask = ndimage.binary_fill_holes(mask)
        padded = np.pad(mask, 1)
        features, radius = shape_features(padded)
        interior = interior_all[box] & mask
        if interior.sum() < 6:
            interior = mask
        classes = classes_all[box]
        inside = classes[interior]
        counts = np.bincount(inside, minlength=2 * len(COLOURS) + 1).astype(float)
        unknown = counts[2 * len(COLOURS)]
        colour = counts[: len(COLOURS)] / max(counts[: len(COLOURS)].sum() + unknown, 1.0)
        texture = texture_features(classes, interior)
        features.update(texture)
        ys, xs = np.nonzero(mask)
        objects.append(
            DetectedObject(
                area=area / side**2,
                radius=radius / side,
                centre=((xs.mean() + box[1].start) / side, (ys.mean() + box[0].start) / side),
                colour=colour,
                shape=shape_memberships(features),
                texture=texture_memberships(texture),
                features=features,
            )
        )
    red, green, blue = (float(v) for v in background)
    return ImageAnalysis(
        objects=tuple(objects),
        background_rgb=(red, green, blue),
        foreground_fraction=float(foreground.mean()),
    )
