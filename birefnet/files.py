"""File helpers: atomic writes and image reading that never leaves half-written files."""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import logging
import math
import os
import re
import threading
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Collection

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import first_line

log = logging.getLogger("birefnet")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".avif", ".bmp", ".tif", ".tiff", ".gif")
# pictures Pillow reads only with a plugin package (the `pictures` extra): (format, module, package)
PLUGIN_PICTURES = {
    ".heic": ("HEIC", "pillow_heif", "pillow-heif"),
    ".heif": ("HEIF", "pillow_heif", "pillow-heif"),
    ".jxl": ("JPEG XL", "pillow_jxl", "pillow-jxl-plugin"),
}
CUTOUT, OBJECT = "_cutout", "_object"  # what an output's name adds to its input's stem (`output_paths`)
_PILLOW_LIMIT = threading.Lock()  # images are opened in several threads; one changes Pillow's limit at a time


def cache_folder(feature: str) -> Path:
    """Where `feature` keeps what it can make again: $BIREFNET_CACHE/feature, else ~/.cache/birefnet/feature."""
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(os.environ.get("BIREFNET_CACHE") or user_cache / "birefnet") / feature


@contextmanager
def atomic_path(path, replace: bool = True):
    """Yield a temporary sibling of `path`; on success it becomes `path` in one step.

    The temporary name is short (`.tmp<random><suffix>`), so any name the file system allows for
    `path` works. `replace=False` refuses (FileExistsError) when `path` appeared meanwhile, without
    a moment where another writer's file could be lost.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())  # some writers (safetensors) create files private to the owner
        if replace:
            os.replace(tmp, path)
        else:
            place_new(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def is_atomic_temporary(name: str) -> bool:
    """True for the name `atomic_path` gives its temporaries (`.tmp` + 8 hex digits + the suffix): a
    write killed before its rename leaves such a file behind, and a program that owns a folder
    (a training run's) clears them at its next start. Kept beside `atomic_path`: one place to change both."""
    return re.fullmatch(r"\.tmp[0-9a-f]{8}(\.[^.]*)?", name) is not None


def remove_killed_writes(folders: Collection[Path], before: float) -> list[Path]:
    """Remove the temporaries (`is_atomic_temporary`) that writes killed before their rename left in
    `folders`, last changed before `before` (a `time.time()`): a writer still at work (another run into
    the same folder) changes its file later than that. Returns what was removed; nothing else is touched."""
    removed = []
    for folder in folders:
        for stale in Path(folder).glob(".tmp*"):
            with contextlib.suppress(OSError):  # gone meanwhile, or not ours to remove: left as it is
                if is_atomic_temporary(stale.name) and stale.is_file() and stale.stat().st_mtime < before:
                    stale.unlink()
                    removed.append(stale)
    return removed


def place_new(tmp: Path, path: Path) -> None:
    """Rename `tmp` to `path` only if `path` does not exist: a hard link fails atomically on an existing
    name; file systems without hard links get a check just before the rename."""
    taken = f"{path} already exists (written meanwhile?); it was left as it was, outputs are never overwritten"
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(taken) from None
    except OSError:  # no hard links here (FAT, some network shares)
        if path.exists():
            raise FileExistsError(taken) from None
        os.replace(tmp, path)


def current_umask() -> int:
    """The process umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_image(path) -> Image.Image:
    """Open an image, apply its EXIF orientation and load the pixels (raises OSError if unreadable)."""
    return read_frames(path)[0]


@contextmanager
def pillow_limit(max_pixels: float):
    """Pillow refuses images over twice Image.MAX_IMAGE_PIXELS (~179 megapixels) and warns above it, as
    decompression bombs; for one open, `max_pixels` decides instead (the server's --max-megapixels-in;
    no limit for the user's own files). The limit is only raised, for the header read only (the image
    is not decoded yet), and put back after, so other code keeps Pillow's default."""
    with _PILLOW_LIMIT, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        before = Image.MAX_IMAGE_PIXELS
        if before is not None and max_pixels > before:
            Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = before


def read_frames(path) -> tuple[Image.Image, int]:
    """(the first frame as `read_image` reads it, how many frames the file holds): an animated GIF,
    WebP or PNG is one picture here, and the caller can say so. A local file is the user's own: any
    size is read (a 200-megapixel scan is no decompression bomb here). A HEIC or JPEG XL picture
    needs its plugin package: read with it when installed, else one line naming it."""
    plugin = PLUGIN_PICTURES.get(Path(path).suffix.lower())
    if plugin is not None:
        load_plugin(plugin[1])
    try:
        with pillow_limit(math.inf):
            image = Image.open(path)
    except UnidentifiedImageError:
        if plugin is None:
            raise OSError("not a picture this tool reads (empty, damaged, or another kind of file)") from None
        raise OSError(missing_plugin(plugin)) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise undecodable(err) from None
    with image:
        try:
            frames = getattr(image, "n_frames", 1)
            image = ImageOps.exif_transpose(image)
            image.load()
        except (OSError, SyntaxError, ValueError) as err:
            raise undecodable(err) from None
    return cmyk_to_srgb(image), frames


def cmyk_to_srgb(image: Image.Image) -> Image.Image:
    """A CMYK picture with its own CMYK profile (print and stock photos: Photoshop embeds one) as the
    sRGB a colour-managed viewer shows, converted through that profile by littleCMS (Pillow's ImageCms);
    Pillow's own conversion ignores the profile, and its colours were some 20 levels off. Relative
    colorimetric with black point compensation, Photoshop's default: every colour the profile holds
    keeps its look, paper white becomes white and the deepest black black; perceptual rendering follows
    tables each profile's maker fills differently. The result is untagged sRGB (the web's default, as
    every picture this tool writes). Every other picture comes back as it is: CMYK without a CMYK profile
    (or with a damaged one, said in a warning) is left to Pillow's conversion; RGB and grey keep their
    values and profiles (the model sees stored values, as in the official code). One conversion for every
    reader: files here, the server's uploads, pictures handed to the library (`inference.image_tensor`)."""
    profile = image.info.get("icc_profile")
    if image.mode != "CMYK" or not profile or profile[16:20] != b"CMYK":  # header bytes 16-19: its colours
        return image
    try:
        from PIL import ImageCms  # littleCMS: in Pillow's wheels, optional when Pillow is built from source
    except ImportError:
        return image
    try:
        converted = ImageCms.profileToProfile(
            image,
            ImageCms.ImageCmsProfile(io.BytesIO(profile)),
            ImageCms.createProfile("sRGB"),
            renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
            outputMode="RGB",
            flags=ImageCms.Flags.BLACKPOINTCOMPENSATION,
        )
    except (ImageCms.PyCMSError, OSError, ValueError) as err:  # a damaged profile
        log.warning("a CMYK picture's colour profile cannot be read (%s): its colours are converted without it", err)
        return image
    converted.info.pop("icc_profile", None)  # ImageCms tags its result; sRGB goes untagged
    return converted


def undecodable(err: Exception) -> Exception:
    """A picture Pillow could not decode, said with the way out; the system's own errors (a file that
    cannot be opened) as they are."""
    if isinstance(err, OSError) and err.errno is not None:
        return err
    return OSError(cannot_be_decoded(err))


def cannot_be_decoded(err: Exception) -> str:
    """What a decoder's error means to the person with the file, in the words the CLI and server share."""
    return f"cannot be decoded ({first_line(err)}): the file is cut short or damaged; copy or export it again"


@functools.cache
def load_plugin(module: str) -> bool:
    """Import a Pillow plugin package if it is installed (pillow-heif registers itself when asked);
    False when it is not."""
    try:
        plugin = importlib.import_module(module)
    except ImportError:
        return False
    if hasattr(plugin, "register_heif_opener"):
        plugin.register_heif_opener()
    return True


def missing_plugin(plugin: tuple[str, str, str]) -> str:
    """What to do about a picture (a PLUGIN_PICTURES entry) whose plugin package is not installed."""
    kind, _, package = plugin
    return (
        f"{kind} pictures need {package}; install the extra: pip install 'birefnet-toolkit[pictures]' "
        "(or convert it to JPEG or PNG)"
    )


# HEIF's major brands (ISO/IEC 23008-12: HEVC stills and sequences, and the generic image brands)
HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1")
JPEG_XL_SIGNATURES = (b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\x0a")  # bare codestream, container


def plugin_picture(head: bytes) -> tuple[str, str, str] | None:
    """The PLUGIN_PICTURES entry of a file by its first bytes (12 suffice), for pictures without a
    name to go by (an upload), so that a missing plugin is named rather than the file called unreadable."""
    if head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS:
        return PLUGIN_PICTURES[".heic" if head[8:12].startswith(b"he") else ".heif"]
    if head.startswith(JPEG_XL_SIGNATURES):
        return PLUGIN_PICTURES[".jxl"]
    return None


def save_image(image: Image.Image, path, replace: bool = True) -> None:
    """Write `image` atomically in the format its suffix names (PNG otherwise); `replace=False` never
    overwrites an existing file (FileExistsError)."""
    with atomic_path(path, replace) as tmp:
        image.save(tmp, format=Image.registered_extensions().get(Path(path).suffix.lower(), "PNG"))


def list_images(inputs, exclude=None) -> list[tuple[Path, Path]]:
    """(file, path relative to its input) for every image file named or inside a named folder (hidden
    files and folders left out), each file once: one named twice, or named and inside a named folder,
    was segmented twice into `a_png.png` and `a_png_2.png`; the first mention decides its place.

    Files a folder holds under `exclude` (the output folder, when it lies inside an input folder)
    are left out: they are earlier outputs, not inputs.
    """
    skipped = Path(exclude).resolve() if exclude is not None else None
    found: dict[str, tuple[Path, Path]] = {}  # by absolute path: `a.png` and `./a.png` are one file
    for item in map(Path, inputs):
        if item.is_dir():
            for file in sorted(item.rglob("*")):
                if skipped is not None and file.resolve().is_relative_to(skipped):
                    continue
                hidden_folder = any(part.startswith(".") for part in file.relative_to(item).parent.parts)
                if file.is_file() and is_picture_name(file.name) and not hidden_folder:  # .thumbnails/, .git/
                    found.setdefault(os.path.abspath(file), (file, file.relative_to(item)))
        else:
            found.setdefault(os.path.abspath(item), (item, Path(item.name)))
    return list(found.values())


def is_image_name(name: str) -> bool:
    """An image's file name, not a hidden file's (macOS's `._IMG_0001.jpg` resource forks)."""
    return Path(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith(".")


def is_picture_name(name: str) -> bool:
    """`is_image_name`, or a picture only a plugin reads (HEIC, JPEG XL): a folder's are segmented where
    the plugin is installed, else each skipped with the line naming it (they were passed over unsaid)."""
    return is_image_name(name) or (Path(name).suffix.lower() in PLUGIN_PICTURES and not name.startswith("."))


def output_paths(relatives: list[Path], cutouts: bool, objects: int = 0) -> list[tuple[Path, ...]]:
    """(mask, cut-out, object 1, ..., object N) output paths per input, never the same path twice.

    `photo.png`, `photo_cutout.png`, `photo_object1.png` normally; inputs whose outputs would
    collide (`x.jpg` and `x.png`, `a_cutout.jpg` beside `a.jpg` with cut-outs, `scene_object1.png`
    beside `scene.png` with boxes) keep their extension in the name (`x_jpg.png`), and a counter
    settles anything left. The cut-out path is there even without cut-outs (never written then).
    """

    def planned(rel: Path, stem: str) -> tuple[Path, ...]:
        numbered = (rel.parent / f"{stem}{OBJECT}{n}.png" for n in range(1, objects + 1))
        return (rel.parent / f"{stem}.png", rel.parent / f"{stem}{CUTOUT}.png", *numbered)

    def names(p: tuple[Path, ...]) -> list[str]:
        written = [p[0], *([p[1]] if cutouts else []), *p[2:]]
        return [str(path).lower() for path in written]

    plan = [planned(rel, rel.stem) for rel in relatives]
    counts: dict[str, int] = {}
    for p in plan:
        for name in names(p):
            counts[name] = counts.get(name, 0) + 1
    plan = [
        planned(rel, f"{rel.stem}_{rel.suffix.lstrip('.').lower()}") if any(counts[n] > 1 for n in names(p)) else p
        for rel, p in zip(relatives, plan)
    ]
    taken: set[str] = set()
    for i, (rel, p) in enumerate(zip(relatives, plan)):
        number = 1
        while any(n in taken for n in names(p)):
            number += 1
            p = planned(rel, f"{rel.stem}_{rel.suffix.lstrip('.').lower()}_{number}")
        plan[i] = p
        taken.update(names(p))
    return plan


def output_stems(name: str, objects: bool = True) -> list[str]:
    """Every STEM whose outputs `output_paths` could name `name` (`STEM.png`, `STEM_cutout.png`,
    `STEM_objectN.png`; `objects=False`: no object masks, as for a clip's frames); `a_cutout.png` is both
    the mask of `a_cutout` and the cut-out of `a`. Empty for a name it never gives."""
    if not name.endswith(".png") or name.startswith("."):
        return []
    base = name.removesuffix(".png")
    stems = [base]
    if base.endswith(CUTOUT) and len(base) > len(CUTOUT):
        stems.append(base.removesuffix(CUTOUT))
    numbered = re.fullmatch(rf"(.+){OBJECT}[1-9][0-9]*", base) if objects else None
    if numbered:
        stems.append(numbered[1])
    return stems


def named_for(inputs: Collection[Path]) -> Callable[[str], bool]:
    """Whether a STEM (`output_stems`) is one `output_paths` gives one of `inputs` (input files whose outputs
    share a folder) in any run: `x` for `x.jpg`, or, had it shared its name with another input then,
    `x_jpg` or `x_jpg_2`; under --overwrite the earlier run's `x.png` is x.jpg's, not an unknown file.
    Never a STEM a picture beside the input that is not one of `inputs` is itself named (`x_jpg.webp`'s
    or `x_jpg.heic`'s outputs are its own)."""
    inputs = {Path(file) for file in inputs}
    folders: dict[str, set[Path]] = {}  # STEM -> the folders of the inputs it may name
    extended: dict[str, set[Path]] = {}  # `x_jpg` -> x.jpg's folder, for the counter names `x_jpg_2`, ...
    for file in inputs:
        with_suffix = f"{file.stem}_{file.suffix.lstrip('.').lower()}"
        for stem in (file.stem, with_suffix):
            folders.setdefault(stem, set()).add(file.parent)
        extended.setdefault(with_suffix, set()).add(file.parent)

    @functools.cache
    def others(folder: Path) -> set[str]:
        """The stems of the pictures in `folder` that are not inputs (listed once, when first asked)."""
        with contextlib.suppress(OSError):
            return {
                Path(name).stem for name in os.listdir(folder) if is_picture_name(name) and folder / name not in inputs
            }
        return set()

    def owned(stem: str) -> bool:
        numbered = re.fullmatch(r"(.+)_(?:[2-9]|[1-9][0-9]+)", stem)
        candidates = folders.get(stem, set()) | (extended.get(numbered[1], set()) if numbered else set())
        return any(stem not in others(folder) for folder in candidates)

    return owned


def remove_unwritten(folder, owned: Callable[[str], bool], written: set[Path], objects: bool = True) -> int:
    """Under --overwrite: remove the files in `folder` named as `output_paths` names the outputs of a stem
    `owned` accepts (this run's inputs, or a clip's frame numbers) that this run did not write
    (`written`: every output it plans, all inputs'): an earlier run's cut-out, third object or longer
    clip's frames would pass for this run's. Nothing else is touched; returns how many were removed."""
    folder = Path(folder)
    removed = 0
    for path in sorted(folder.iterdir()) if folder.is_dir() else ():
        if path not in written and path.is_file() and any(map(owned, output_stems(path.name, objects))):
            path.unlink()
            removed += 1
    return removed


def check_outputs(outputs, inputs, replace: bool) -> None:
    """Refuse, before any work, output names longer than the file system allows, outputs that would land
    on an input file or on an existing file beside an input (always: `cat.png` beside the input `cat.jpg`
    may be the user's own picture, not an earlier output), or on any other existing file (unless
    `replace`): one line naming the first and the way out."""
    for path in map(Path, outputs):  # `x_cutout.png` is 7 bytes longer than `x.jpg`: it failed mid-run
        size, limit = len(os.fsencode(path.name)), longest_name(path.parent)
        if size > limit:
            raise ValueError(
                f"{path}: this output's name is {size} bytes, over the {limit} the file system allows; "
                f"shorten the input's name by {size - limit} or more"
            )
    sources = {Path(path).resolve() for path in inputs}
    beside = {source.parent for source in sources}
    resolved = [Path(path).resolve() for path in outputs]
    for path, full in zip(outputs, resolved):
        if full in sources:
            raise FileExistsError(f"{path} would replace an input image; choose another --out")
    for path, full in zip(outputs, resolved):
        if full.parent in beside and full.exists():
            raise FileExistsError(
                f"{path} already exists beside the inputs and may be one of the user's files, not an earlier output; "
                "choose another --out (or delete it)"
            )
    if not replace:
        existing = [path for path in outputs if Path(path).exists()]
        if existing:
            more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
            raise FileExistsError(
                f"{existing[0]} already exists{more}; choose another --out, or add --overwrite to replace "
                "earlier outputs"
            )


def longest_name(folder: Path) -> int:
    """The longest file name, in bytes, the file system of `folder` (or of its nearest existing parent)
    allows: 255 on most, fewer on some (eCryptfs: 143)."""
    for place in (folder, *folder.absolute().parents):
        with contextlib.suppress(OSError, ValueError):
            return os.pathconf(place, "PC_NAME_MAX")
    return 255


def unfinished(planned: list[Collection[Path]], *columns: list) -> tuple[int, list[set[Path]], list[list]]:
    """--skip-existing (resuming an interrupted run), for images and clips alike: an input is done when
    every output it `planned` exists (each is written under a temporary name and renamed when
    whole, `atomic_path`, so one that exists is complete); an input that plans none (a clip whose frames
    cannot be counted) is never done. Returns (how many inputs are done, the missing outputs of each other
    input, each of `columns`, one item per input, without the done inputs)."""
    missing = [{path for path in paths if not Path(path).exists()} for paths in planned]
    todo = [bool(absent) or not paths for absent, paths in zip(missing, planned)]
    left = [[item for item, go in zip(column, todo) if go] for column in (missing, *columns)]
    return todo.count(False), left[0], left[1:]


def kept_note(kept: int, what: str = "input(s)") -> str:
    """The summary's words for the inputs --skip-existing found done (images and clips say it alike)."""
    return f", kept the outputs {kept} {what} had already (--skip-existing)"


def check_writable(folder) -> None:
    """Create `folder` and write a file in it now, so an unwritable --out is said before the model loads
    (OSError otherwise)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".tmp{uuid.uuid4().hex[:8]}"
    probe.write_bytes(b"")
    probe.unlink()


@contextmanager
def new_folders_removed_on_failure(folder):
    """The folders missing now on the way to `folder` (it and its parents, made later by `check_writable`)
    are removed again, deepest first and only while empty, when the body fails: a failed run leaves no
    folder behind, and a folder that was already there, or anything in one, is never touched."""
    missing = []
    for path in (Path(folder).absolute(), *Path(folder).absolute().parents):
        if os.path.exists(path):  # False, not an error, where it cannot be looked at either
            break
        missing.append(path)
    try:
        yield
    except BaseException:
        for path in missing:
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
