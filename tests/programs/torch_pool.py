"""torch (CPU): the parent imports torch; Pool tasks run matrix products with its intra-op pool."""

import multiprocessing

import torch


def task(seed):
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(300, 300, generator=generator, dtype=torch.float64)
    total = sum(float((a @ a.T).trace()) for _ in range(10))
    return total, torch.get_num_threads()


if __name__ == "__main__":
    with multiprocessing.Pool(2) as pool:
        results = pool.map(task, range(6), chunksize=1)
    print(f"trace sum {sum(total for total, _ in results):.6g}")
    print(f"THREADS torch_in_task {max(threads for _, threads in results)}")
