"""A dataset folder in the rgbx format packed into tar shards, registered as ``"shards"`` (``data.dataset=shards``).

Millions of small files are slow on network and object-store file systems (every open is a metadata round trip) and
awkward to copy; a few hundred shards of ~1000 samples each are not. :func:`pack_dataset` writes::

    OUT/dataset.yaml                  the source folder's, unchanged
    OUT/shards/<split>-00000.tar      plain (uncompressed) tar files: the sample files as the folder had them,
    OUT/shards/<split>-00001.tar      under <modality folder>/<file name>, samples in split order
    OUT/shards/<split>.json           the split's index: sample ids, attributes, and for every file its shard, byte
                                      offset and size

Packed ``decoded``, each member is instead the array its file decodes to (``<file name>.npy``, marked ``"npy"`` in
the index), so that reading a sample decodes nothing.

:class:`ShardedDataset` reads any sample by seeking to its files' bytes (random access: the usual shuffling sampler,
the per-process shares of multi-GPU training and every augmentation work unchanged), decodes them as the folder
dataset would, and gives the same samples as the source folder, bit for bit. A file inside a shard is named
``OUT/shards/<split>-00000.tar/<modality folder>/<file name>`` in messages.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from rgbx.data.datasets.base import DATASETS, FileInfo, SegmentationDataset, probe_file
from rgbx.data.datasets.folder import FolderDataset, list_splits
from rgbx.data.description import DESCRIPTION_FILE, DatasetDescription, load_description
from rgbx.errors import DataError
from rgbx.modalities.encodings import ENCODINGS

__all__ = ["ShardedDataset", "pack_dataset"]

INDEX_FORMAT = "rgbx-shards-1"


def pack_dataset(root: str | Path, out: str | Path, *, shard_size: int = 1000, splits: Sequence[str] | None = None,
                 overwrite: bool = False, decoded: bool = False,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, dict]:
    """Pack a dataset folder in the rgbx format into tar shards (see the module docstring). The source is checked
    first (``rgbx data check``'s header checks), so a broken file is named before anything is written.

    ``decoded``: store each file's values as read (a ``.npy`` array, member ``<folder>/<file name>.npy``) instead of
    the file, so that reading a sample decodes nothing: a PNG takes most of a loader worker's time (9.8 ms of
    14.5 ms to read an RGB-D 480×640 sample), an uncompressed array a fraction of a millisecond. The shards are
    larger (an 8-bit RGB 480×640 image takes 0.9 MB); the samples are the same.

    ``overwrite``: replace an earlier pack at ``out``, removing only the files a pack writes (its dataset.yaml, and
    the ``*-NNNNN.tar`` shards and split indexes in shards/); anything else there (notes, results) is kept.

    Returns split → ``{"samples": N, "shards": K}``."""
    root, out = Path(root), Path(out)
    if shard_size < 1:
        raise DataError(f"shard size {shard_size}: expected at least 1 sample per shard")
    load_description(root)
    splits = list(splits) if splits else list_splits(root)
    if not splits:
        raise DataError(f"{root / 'splits'}: no split files (*.txt) found")
    if out.resolve() == root.resolve():
        raise DataError(f"{out}: the packed dataset must go to another folder than its source")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: not a folder; the packed dataset must go to a new or empty folder")
    replaced = []
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"{out}: not empty; pass overwrite=True (--overwrite) to replace the packed dataset in "
                            f"it (only the files a pack writes; anything else in it is kept)")
        if not (out / "shards").is_dir():
            raise DataError(f"{out}: not empty and not a packed dataset (no shards/ folder); refusing to replace it")
        replaced = _packed_files(out)
    datasets = {split: FolderDataset(root, split, check="headers") for split in splits}  # before anything is removed
    for path in replaced:  # an earlier pack's own files only: the user's notes, results etc. in OUT stay
        path.unlink()
    (out / "shards").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(root / DESCRIPTION_FILE, out / DESCRIPTION_FILE)
    total = sum(len(ds) for ds in datasets.values())
    done, summary = 0, {}
    for split, ds in datasets.items():
        folders = {name: _member_folder(name, (ds.description.label if name == "label"
                                               else ds.description.modalities[name]).folder)
                   for name in [*ds.sources, "label"]}
        shards, samples, packed = [], [], {}
        for start in range(0, len(ds), shard_size):
            name = f"{split}-{len(shards):05d}.tar"
            shards.append(name)
            with tarfile.open(out / "shards" / name, "w") as tar:
                for sample_id in ds.ids[start:start + shard_size]:
                    if sample_id in packed:  # listed again (a split that repeats samples): the same members
                        samples.append({**packed[sample_id]})
                        done += 1
                        continue
                    files = {}
                    for kind, path in ds.files(sample_id).items():
                        if path is None or not Path(path).is_file():
                            continue  # an optional sensor this sample lacks: absent in the shard too
                        member = f"{folders[kind]}/{Path(path).name}"
                        if decoded:
                            encoding = (ds.description.label if kind == "label"
                                        else ds.description.modalities[kind]).encoding
                            data = io.BytesIO()
                            np.save(data, np.ascontiguousarray(ds.read_file(Path(path), encoding)))
                            member, size = member + ".npy", data.tell()
                            data.seek(0)
                        else:
                            data, size = open(path, "rb"), Path(path).stat().st_size  # noqa: SIM115
                        info = tarfile.TarInfo(member)
                        info.size, info.mtime, info.mode = size, 0, 0o644
                        with data:
                            tar.addfile(info, data)
                        # the data ends the archive so far, padded to whole 512-byte blocks
                        data_start = tar.offset - -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                        files[kind] = [len(shards) - 1, data_start, info.size, member]
                        if decoded:
                            files[kind].append("npy")  # how the member is stored, when not as the folder's file
                    samples.append({"id": sample_id, "attributes": ds.attributes(sample_id), "files": files})
                    packed[sample_id] = samples[-1]
                    done += 1
                    if progress is not None:
                        progress(done, total)
        index = {"format": INDEX_FORMAT, "split": split, "shards": shards, "samples": samples}
        tmp = out / "shards" / f"{split}.json.tmp"
        tmp.write_text(json.dumps(index))
        tmp.replace(out / "shards" / f"{split}.json")
        summary[split] = {"samples": len(samples), "shards": len(shards)}
    return summary


def is_index(path: Path) -> bool:
    """Whether ``path`` is a split index a pack wrote (a ``.json`` file of :data:`INDEX_FORMAT`)."""
    if path.suffix != ".json" or not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("format") == INDEX_FORMAT
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return False


def packed_splits(root: str | Path) -> list[str]:
    """The splits of a packed dataset: its index files in ``root/shards`` (other JSON files there are not)."""
    return sorted(p.stem for p in (Path(root) / "shards").glob("*.json") if is_index(p))


def _packed_files(out: Path) -> list[Path]:
    """The files an earlier :func:`pack_dataset` wrote to ``out`` (its dataset.yaml, and its shards and indexes
    under shards/), which ``overwrite`` replaces; nothing else in ``out`` is touched."""
    def written(path: Path) -> bool:
        if not (path.is_file() or path.is_symlink()):  # a link is removed, never what it points to
            return False
        if re.fullmatch(r".+-\d{5}\.tar", path.name) or path.name.endswith(".json.tmp"):
            return True
        return is_index(path)  # a split index, not some other JSON file

    found = sorted(p for p in (out / "shards").iterdir() if written(p))
    return ([out / DESCRIPTION_FILE] if (out / DESCRIPTION_FILE).is_file() else []) + found


def _member_folder(name: str, folder: str) -> str:
    """The folder of a modality's members in a shard: the dataset folder's own, or the modality's name when that
    folder lies outside the dataset folder (``../other/rgb``, an absolute path: a pseudo-labelled folder's sensors),
    so that no member name leads out of where the archive is extracted."""
    path = Path(folder)
    return name if path.is_absolute() or ".." in path.parts else path.as_posix()


def _header_name(member: str) -> str:
    """The name a tar header written by :func:`pack_dataset` (tarfile's PAX format) holds for ``member``: the member's
    own name, or for a name longer than a header's 100 bytes or with non-ASCII characters (then given in full in a
    PAX extended header before it) the shortened / replaced name in the header itself."""
    buffer = tarfile.TarInfo(member).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    return tarfile.TarInfo.frombuf(buffer[-tarfile.BLOCKSIZE:], "utf-8", "surrogateescape").name


@DATASETS.register("shards")
class ShardedDataset(SegmentationDataset):
    """A split of a packed dataset (:func:`pack_dataset`); the same samples as the folder it was packed from. See
    :class:`~rgbx.data.datasets.base.SegmentationDataset` for the arguments."""

    @classmethod
    def splits_on_disk(cls, root: Path) -> list[str]:
        splits = packed_splits(root)
        if not splits:
            raise DataError(f"{root / 'shards'}: no split index (*.json) found; pack with `rgbx data pack`")
        return splits

    def describe(self) -> DatasetDescription:
        return load_description(self.root)

    def list_ids(self) -> list[str]:
        path = self.root / "shards" / f"{self.split}.json"
        if not path.is_file():
            found = sorted(p.stem for p in (self.root / "shards").glob("*.json"))
            raise DataError(f"{path}: split index not found (packed splits here: {', '.join(found) or 'none'}; "
                            f"pack a folder with `rgbx data pack`)")
        try:
            index = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: not a readable index ({e})") from None
        if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
            raise DataError(f"{path}: not an rgbx shard index (expected format {INDEX_FORMAT!r})")
        names, samples = index.get("shards"), index.get("samples")
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names) \
                or not isinstance(samples, list):
            raise DataError(f"{path}: not an rgbx shard index (expected a list of shard file names under 'shards' "
                            f"and a list of samples under 'samples'); pack the folder again with `rgbx data pack`")
        self._shards = [self.root / "shards" / name for name in names]
        self._files: dict[str, dict[str, Path]] = {}
        self._members: dict[str, tuple[Path, int, int, str]] = {}  # shard, offset, size, member name
        self._owner: dict[str, tuple[str, str]] = {}  # member → (sample id, modality), to name them in messages
        self._stored_as: dict[str, str] = {}  # members stored decoded (pack_dataset(decoded=True)): "npy"
        self._attributes: dict[str, dict[str, str]] = {}
        problems = []
        for i, sample in enumerate(samples):
            if not isinstance(sample, dict) or not isinstance(sample.get("id"), str) \
                    or not isinstance(sample.get("files"), dict):
                problems.append(f"{path}: sample #{i}: expected {{\"id\": ..., \"files\": {{modality: entry}}}}")
                continue
            files = {}
            for kind, entry in sample["files"].items():
                problem = self._entry_problem(entry, len(names))
                if problem:
                    problems.append(f"{path}: sample {sample['id']!r}, {kind}: {problem}")
                    continue
                shard, offset, size, member, *stored = entry
                virtual = self._shards[shard] / member
                files[kind] = virtual
                self._members[str(virtual)] = (self._shards[shard], offset, size, member)
                self._owner[str(virtual)] = (sample["id"], kind)
                if stored:
                    self._stored_as[str(virtual)] = stored[0]
            self._files[sample["id"]] = files
            self._attributes[sample["id"]] = sample.get("attributes", {})
        if problems:
            raise DataError(f"{path}: {len(problems)} broken index entr{'y' if len(problems) == 1 else 'ies'} (the "
                            f"index was edited or damaged; pack the folder again with `rgbx data pack`)", problems)
        return [sample["id"] for sample in samples]  # in order, repeats kept (oversampling)

    @staticmethod
    def _entry_problem(entry, shards: int) -> str | None:
        """What is wrong with one index entry ``[shard, offset, size, member]`` (+ ``"npy"`` when stored decoded)."""
        form = '[shard number, byte offset, size, member name] (+ "npy" for a decoded pack)'
        if not isinstance(entry, list) or len(entry) not in (4, 5):
            return f"expected an entry {form}, got {json.dumps(entry)[:80]}"
        shard, offset, size, member, *stored = entry
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (shard, offset, size)) \
                or not isinstance(member, str) or not member or stored not in ([], ["npy"]):
            return f"expected an entry {form}, got {json.dumps(entry)[:80]}"
        if shard >= shards:
            listed = f"{shards} shard(s), numbered 0 to {shards - 1}" if shards else "no shards"
            return f"shard number {shard}, but the index lists {listed}"
        return None

    def files(self, sample_id: str) -> dict[str, Path | None]:
        files = self._files[sample_id]
        return {name: files.get(name) for name in [*self.sources, "label"]}

    def attributes(self, sample_id: str) -> dict[str, str]:
        return self._attributes.get(sample_id, {})

    def layout_problems(self) -> list[str]:
        return [f"{shard}: shard file not found" for shard in self._shards if not shard.is_file()]

    # -- reading members of the shards instead of files --------------------------------------------------------
    def file_exists(self, path: Path) -> bool:
        return str(path) in self._members

    def _name(self, path: Path) -> str:
        """A member as messages name it: the shard and the member's path in it, the sample and the modality."""
        owner = self._owner.get(str(path))
        return f"{path} (sample {owner[0]!r}, {owner[1]})" if owner else str(path)

    def _header_problem(self, path: Path, header: bytes | None = None) -> str | None:
        """What the tar header just before the member's bytes says that the index does not: another member's name
        (shards swapped, renamed or copied from another pack of the same layout, where the sizes alone may agree)
        or another size (an index edited by hand, or left from another pack). None when it fits, or when the shard
        ends before that header (cut short: nothing to compare with). ``header``: those 512 bytes when the caller
        has read them already (:meth:`_member` reads them with the member's bytes, in the same read)."""
        shard, offset, size, member = self._members[str(path)]
        if offset < tarfile.BLOCKSIZE:
            return f"no tar header precedes offset {offset} in the shard"
        if header is None:
            try:
                with open(shard, "rb") as f:
                    f.seek(offset - tarfile.BLOCKSIZE)
                    header = f.read(tarfile.BLOCKSIZE)
            except OSError:
                return None  # an unreadable shard is reported as such by the caller
        if len(header) < tarfile.BLOCKSIZE:
            return None
        try:
            info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        except (ValueError, tarfile.HeaderError):
            return f"no tar header precedes offset {offset} in the shard"
        if info.name != member and info.name != _header_name(member):
            return (f"the shard holds the member {info.name!r} at offset {offset}, where the index expects "
                    f"{member!r}")
        if info.size != size:
            return f"the shard's member there is {info.size} bytes, where the index expects {size}"
        return None

    def _index_fits(self, path: Path) -> bool:
        """Whether the tar header just before the member's bytes describes the member the index gives (its name
        and size): :meth:`_header_problem` finds nothing."""
        return self._header_problem(path) is None

    def _misplaced(self, path: Path, what: str) -> DataError:
        """A member the index places where the shard does not hold it (``what``: what reading found)."""
        shard, offset, size, _ = self._members[str(path)]
        return DataError(f"{self._name(path)}: {what}; the index's offset {offset} / size {size} for it do not match "
                         f"the shard (the index was edited or is out of date: pack the folder again with "
                         f"`rgbx data pack --overwrite`)")

    def _foreign(self, path: Path, what: str) -> DataError:
        """A member whose shard holds another member where the index places it (``what``: which)."""
        return DataError(f"{self._name(path)}: {what}; the shard does not belong with this index (shards swapped, "
                         f"renamed or copied from another pack, or the index was edited): reading on would give "
                         f"another sample's data; pack the folder again with `rgbx data pack --overwrite`")

    def _member(self, path: Path, head: int | None = None) -> io.BytesIO:
        """The member's bytes, or only its first ``head`` bytes (the shard is still checked to hold all of it). The
        tar header before them is read in the same read and compared with the index (the member's name and size),
        so that a shard swapped with another, or taken from another pack, is refused rather than read as other
        samples."""
        shard, offset, size, _ = self._members[str(path)]
        start = max(offset - tarfile.BLOCKSIZE, 0)
        try:
            with open(shard, "rb") as f:
                end = f.seek(0, io.SEEK_END)
                f.seek(start)
                data = f.read(offset - start + (size if head is None else min(head, size)))
        except OSError as e:
            raise DataError(f"{self._name(path)}: cannot read the shard ({e})") from None
        header, data = data[:offset - start], data[offset - start:]
        problem = self._header_problem(path, header if offset >= tarfile.BLOCKSIZE else None)
        if end < offset + size:
            what = f"the shard ends {offset + size - end} bytes early"
            if problem is not None:
                raise self._misplaced(path, what)
            raise DataError(f"{self._name(path)}: {what} (a truncated copy of the shard, or an index that is out of "
                            f"date)")
        if problem is not None:
            raise (self._foreign if problem.startswith("the shard holds the member") else self._misplaced)(
                path, problem)
        return io.BytesIO(data)

    def _decode_error(self, path: Path, buffer: io.BytesIO, e: DataError) -> DataError:
        """A decoder's error about a member: it names its input, a buffer here, which the member's name replaces."""
        message, buf = str(e), repr(buffer)
        if message.startswith(buf + ": "):
            message = message[len(buf) + 2:]
        message = message.replace(" " + buf, "").replace(buf, "the member")
        if not self._index_fits(path):
            return self._misplaced(path, message)
        return DataError(f"{self._name(path)}: {message}")

    def _npy_info(self, path: Path) -> FileInfo:
        """Channels, dtype and size of an ``.npy`` member from its header alone (a decoded pack's members are all
        arrays: opening the dataset checks every file's header, which must not read every array)."""
        head = self._member(path, head=4096)
        try:
            version = np.lib.format.read_magic(head)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(head)
        except ValueError:  # not an array, or a header longer than the bytes read: read the whole member
            arr = self.read_file(path, "npy")
            shape, dtype = arr.shape, arr.dtype
        if len(shape) not in (2, 3):
            raise DataError(f"{self._name(path)}: expected an array of shape (H, W) or (C, H, W), got {shape}")
        shape = shape if len(shape) == 3 else (1, *shape)
        return FileInfo(shape[0], str(dtype), tuple(shape[1:]))

    def read_file(self, path: Path, encoding: str) -> np.ndarray:
        encoding = self._stored_as.get(str(path), encoding)
        data = self._member(path)
        try:
            return ENCODINGS.get(encoding).read(data)
        except DataError as e:
            raise self._decode_error(path, data, e) from None

    def probe_path(self, path: Path, encoding: str) -> FileInfo:
        encoding = self._stored_as.get(str(path), encoding)
        if encoding == "npy":
            return self._npy_info(path)
        data = self._member(path)
        try:
            return probe_file(data, encoding)
        except DataError as e:
            raise self._decode_error(path, data, e) from None
