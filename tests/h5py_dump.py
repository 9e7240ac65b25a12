"""Prints what h5py sees in a file written by tests/remote_driver_content.h,
in the format ExpectedDump() predicts, so the test can compare the two."""
import sys

import h5py

with h5py.File(sys.argv[1], "r") as f:
    ints = f["ints"][()]
    print(f"ints {ints.dtype} {ints.shape} sum={int(ints.sum())} "
          f"first={int(ints[0])} last={int(ints[-1])}")
    m = f["group/matrix"][()]
    print(f"group/matrix {m.dtype} {m.shape} sum={float(m.sum()):.1f}")
    title = f.attrs["title"]
    if isinstance(title, bytes):
        title = title.decode()
    print(f"title={title}")
