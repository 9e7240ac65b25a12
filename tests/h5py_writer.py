"""Writes the HDF5 file that file_image_test reads back through h5depot.

Usage: h5py_writer.py OUTPUT.h5 {earliest,latest}

Every value follows a formula that file_image_test.cc recomputes, so the
test compares values, not just that the image opens. Keep both in step.
"""
import sys

import h5py
import numpy as np


def main():
    path, low = sys.argv[1], sys.argv[2]
    with h5py.File(path, "w", libver=(low, "latest")) as f:
        f.attrs["title"] = "h5depot round trip"
        f.attrs["shape"] = np.array([200, 300], dtype="<i8")

        run = f.create_group("run")
        config = run.create_group("config")
        config.attrs["threshold"] = np.float64(0.25)
        config.attrs["label"] = "détecteur β"

        # Chunked, no filter: value(i, j) = 3 * (300 * i + j) - 7.
        rows, cols = np.indices((200, 300))
        run.create_dataset("chunked", data=(3 * (300 * rows + cols) - 7)
                           .astype("<i4"), chunks=(50, 60))

        # Chunked, shuffled and gzip-compressed: value(k) = 0.5 * k.
        run.create_dataset("gzip", data=(0.5 * np.arange(10000))
                           .reshape(100, 100).astype("<f8"),
                           chunks=(10, 25), shuffle=True,
                           compression="gzip", compression_opts=6)

        # Variable-length UTF-8 strings.
        strings = run.create_dataset(
            "names", (4,), dtype=h5py.string_dtype("utf-8"))
        strings[:] = ["alpha", "beta", "γάμμα", ""]


if __name__ == "__main__":
    main()
