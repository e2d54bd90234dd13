"""Reference orders from torch.utils.data.DistributedSampler.

Writes <out>/orders.json: for each setting (dataset size, num_replicas, rank,
shuffle, seed, drop_last, epoch), list(sampler) after sampler.set_epoch(epoch).
"""

import itertools
import json
import pathlib
import sys

from torch.utils.data import DistributedSampler


def order(n, num_replicas, rank, shuffle, seed, drop_last, epoch):
    sampler = DistributedSampler(range(n), num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                                 seed=seed, drop_last=drop_last)
    sampler.set_epoch(epoch)
    return {"n": n, "num_replicas": num_replicas, "rank": rank, "shuffle": shuffle, "seed": seed,
            "drop_last": drop_last, "epoch": epoch, "num_samples": len(sampler),
            "total_size": sampler.total_size, "indices": list(sampler)}


def main():
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    cases = []
    for n, replicas, shuffle, drop_last, seed, epoch in itertools.product(
            [1, 7, 10, 13, 100], [1, 3, 4], [True, False], [False, True], [0, 42], [0, 3]):
        for rank in range(replicas):
            cases.append(order(n, replicas, rank, shuffle, seed, drop_last, epoch))
    for rank in range(8):  # more padding than data; nothing left with drop_last
        cases.append(order(3, 8, rank, True, 1, False, 2))
        cases.append(order(3, 8, rank, True, 1, True, 2))
    cases.append(order(0, 2, 1, True, 0, False, 0))
    cases.append(order(5000, 2, 1, True, 1234, False, 7))
    cases.append(order(50, 1, 0, True, -3, False, 1))  # a negative seed wraps to 2**64 - 3 + 1
    (out / "orders.json").write_text(json.dumps(cases))
    print(f"wrote {len(cases)} orders to {out}")


if __name__ == "__main__":
    main()
