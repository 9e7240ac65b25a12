#!/usr/bin/python3
"""Process B of the file image example, in Python: waits for the image
that process A (packet_producer.py, or the C packet_producer) pushes,
opens it as an h5py.File on the fetched bytes (no copy) and prints what A
wrote, as the C packet_consumer does.

Usage: packet_consumer.py TARGET IMAGE_ID [TIMEOUT_SECONDS]
  e.g. packet_consumer.py unix:/tmp/h5depot.sock run-42/packet 60

Prints "waiting for IMAGE_ID" before it starts waiting. Exits 0 after
printing the packet; 1 on any failure, 3 if the image did not appear in
time."""

import sys

import h5depot


def text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def main(target, image_id, timeout):
    with h5depot.Client(target) as depot:
        print(f"waiting for {image_id}", flush=True)
        with depot.open(image_id, wait=timeout) as f:
            print(f"opened {image_id}")
            print(f"/ @run = {int(f.attrs['run'])}")
            print(f"/ @source = {text(f.attrs['source'])}")
            detector = f["detector"]
            print(f"/detector @name = {text(detector.attrs['name'])}")
            adc = detector["adc"][:]
            print(f"/detector/adc [{adc.shape[0]} x {adc.shape[1]}]:")
            for row in adc:
                print(f"{row[0]:6d}" + "".join(f"{value:5d}" for value in row[1:]))
            energy = detector["energy"]
            values = energy[:]
            print(f"/detector/energy [{len(values)}]: first {values[0]:g}, "
                  f"last {values[-1]:g}, sum {values.sum():g}")
            print(f"/detector/energy @units = {text(energy.attrs['units'])}")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    try:
        main(sys.argv[1], sys.argv[2],
             float(sys.argv[3]) if len(sys.argv) == 4 else 60)
    except h5depot.Timeout as error:
        print(f"packet_consumer: {error}", file=sys.stderr)
        sys.exit(3)
    except h5depot.Error as error:
        sys.exit(f"packet_consumer: {error}")
