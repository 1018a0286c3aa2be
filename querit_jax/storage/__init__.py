"""Every location the package reads or writes: a local path or a `gs://` URL, through one interface.

Locations are strings everywhere (configs, manifests, flags). Local paths are made absolute (Orbax
misreads relative ones); URLs (`gs://bucket/...`, and any other fsspec scheme) go through
`etils.epath`, which reaches Cloud Storage with gcsfs (Orbax and tensorstore reach it natively).
Nothing else in the package touches a user-given location with os/open/shutil (a test checks).

Object stores have no atomic rename and no append:
  * a single file is written in one piece (`write_text`, `write_bytes`, `atomic_writer`): on a local
    disk through a temporary file and `os.replace`, on an object store as one upload, which becomes
    visible complete or not at all;
  * a directory is committed by a marker (`DirectoryWriter`): its files first, the marker (e.g. a
    checkpoint's `model.json`) last, and readers check the marker (`is_committed`). On a local disk
    the directory is staged beside its final place and moved in with renames, so an existing one is
    replaced atomically; on an object store the old marker is removed first, so a reader never takes
    half-written files for a complete directory;
  * files that grow (metrics logs) are rewritten whole.

Readers that need local files (transformers' tokenizers and configs, ArrayRecord) get a local copy
of a remote directory (`local_copy`), cached by URL and content listing. `contained` keeps names
read from manifests inside their directory, for paths and URLs alike.

Arrays (`save_array`, `load_array`, `memmap_bytes`) are .npy files and raw byte files;
memory-mapping needs a local file (take a `local_copy` of a remote one first). `stat_key` identifies
a file's version cheaply (size + modification time locally, size + generation/etag on object
stores), so a content hash computed once can be reused while the key matches; `stat_keys` gives
those of a whole directory from one listing.

Modules: `paths` (locations as strings, containment), `files` (reading, one-piece writing, copies,
arrays), `local` (cached local copies of remote directories, scratch space, mirrored uploads) and
`commit` (directories committed by a marker). Callers use the names re-exported here.
"""

from querit_jax.storage.commit import DirectoryWriter, is_committed
from querit_jax.storage.files import (
    atomic_writer,
    copy_file,
    copy_tree,
    exists,
    files,
    glob,
    isdir,
    isfile,
    listdir,
    load_array,
    makedirs,
    memmap_bytes,
    move,
    open_read,
    open_read_raw,
    read_bytes,
    read_text,
    remove,
    rmtree,
    save_array,
    size,
    stat_key,
    stat_keys,
    temp_dir,
    upload_tree,
    write_bytes,
    write_text,
)
from querit_jax.storage.local import (
    GrowingFile,
    UploadedDir,
    cache_root,
    local_copy,
    local_scratch,
    scratch_dir,
)
from querit_jax.storage.paths import (
    absolute,
    basename,
    contained,
    dirname,
    inside,
    is_remote,
    join,
    path,
    same,
)

__all__ = [
    "DirectoryWriter", "GrowingFile", "UploadedDir", "absolute", "atomic_writer", "basename",
    "cache_root", "contained", "copy_file", "copy_tree", "dirname", "exists", "files", "glob",
    "inside", "is_committed", "is_remote", "isdir", "isfile", "join", "listdir", "load_array",
    "local_copy", "local_scratch", "makedirs", "memmap_bytes", "move", "open_read", "open_read_raw",
    "path", "read_bytes", "read_text", "remove", "rmtree", "same", "save_array", "scratch_dir",
    "size", "stat_key", "stat_keys", "temp_dir", "upload_tree", "write_bytes", "write_text",
]  # fmt: skip
