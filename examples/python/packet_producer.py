#!/usr/bin/python3
"""Process A of the file image example, in Python: builds an HDF5 file in
memory with h5py (the core driver, nothing touches the disk), writes
datasets and attributes, and pushes its image to h5depotd. Process B
(packet_consumer.py, or the C packet_consumer) waits for it.

Usage: packet_producer.py TARGET IMAGE_ID
  e.g. packet_producer.py unix:/tmp/h5depot.sock run-42/packet

Exits 0 once the image is stored, 1 on any failure (with a message)."""

import sys

import h5py
import numpy as np

import h5depot


def main(target, image_id):
    with h5py.File("packet.h5", "w", driver="core", backing_store=False) as f:
        f.attrs["run"] = np.int64(42)
        f.attrs["source"] = np.bytes_("packet_producer")
        detector = f.create_group("detector")
        detector.attrs["name"] = np.bytes_("calorimeter")
        adc = 100 * np.arange(4)[:, None] + np.arange(6)[None, :]
        detector.create_dataset("adc", data=adc.astype(np.uint16))
        energy = detector.create_dataset(
            "energy", data=np.arange(1000) * 0.25, chunks=(250,),
            compression="gzip")
        energy.attrs["units"] = np.bytes_("GeV")
        with h5depot.Client(target) as depot:
            info = depot.push(image_id, f)
    print(f"pushed {image_id}: {info.size} bytes, generation {info.generation}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    try:
        main(sys.argv[1], sys.argv[2])
    except h5depot.Error as error:
        sys.exit(f"packet_producer: {error}")
