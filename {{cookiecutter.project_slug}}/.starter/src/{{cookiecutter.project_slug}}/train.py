{% if cookiecutter.framework == "pytorch" %}
"""Training entry point: a model trained with DistributedDataParallel on every GPU of
every node, or on CPU processes (gloo) where there is no GPU, unchanged.

    docker/train                          # every GPU of this machine, or 2 CPU processes
    make train ARGS="--epochs 20"         # the same, inside the running container
    python -m {{ cookiecutter.project_slug }}.train --epochs 2       # one process, no torchrun

docker/train holds the torchrun command line (nodes, processes, rendezvous). The data is
synthetic (no download), so this runs anywhere as it is: replace `synthetic_dataset`
and `build_model` with your own. Every epoch, the first process of each node writes a
checkpoint to --checkpoint-dir (written whole, then renamed over the last one), and a new
run resumes from the newest one any node has: an interrupted run loses at most the epoch
it was in, and the folder may be shared storage or each node's own. The last line
printed is for scripts:

    train: done epochs=10 loss_first=1.234567 loss_last=0.123456 resumed_from=0
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

CHECKPOINT_NAME = "last.pt"
# What torchrun sets for each process it starts; init_process_group reads them (env://).
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train the model (synthetic data until you plug in yours).")
    parser.add_argument("--epochs", type=positive, default=10, help="epochs in all, resumed ones included")
    parser.add_argument("--batch-size", type=positive, default=256, help="samples per step and process")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate (AdamW)")
    parser.add_argument("--samples", type=positive, default=32768, help="size of the synthetic data set")
    parser.add_argument("--features", type=positive, default=32, help="inputs per sample")
    parser.add_argument("--classes", type=positive, default=10, help="classes to tell apart")
    parser.add_argument("--seed", type=int, default=0, help="data and initial weights (the same on every process)")
    parser.add_argument(
        "--checkpoint-dir", type=Path, default=Path("checkpoints"), help="where checkpoints go (default: checkpoints/)"
    )
    parser.add_argument("--cpu", action="store_true", help="train on the CPU (gloo) even where a GPU is visible")
    return parser.parse_args(argv)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def fail(message: str) -> NoReturn:
    print(f"train: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


@dataclass
class Process:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None: one process, no process group

    @property
    def first(self) -> bool:
        return self.rank == 0


def join_the_job(cpu_only: bool) -> Process:
    """The process group torchrun describes (env://), or a single process where nothing
    started this one but `python -m`. NCCL on GPUs, gloo on the CPU."""
    use_cuda = torch.cuda.is_available() and not cpu_only
    present = [name for name in TORCHRUN_VARIABLES if name in os.environ]
    if not present:
        return Process(0, 1, 0, torch.device("cuda:0" if use_cuda else "cpu"), None)
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        fail(
            f"torchrun's environment is incomplete: {', '.join(present)} set, {', '.join(missing)} missing. "
            "Start training with docker/train (torchrun), or with plain `python -m` for one process."
        )
    try:
        rank, world_size, local_rank, local_world_size = (
            int(os.environ[name]) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
        )
    except ValueError:
        values = ", ".join(f"{name}={os.environ[name]!r}" for name in TORCHRUN_VARIABLES[:4])
        fail(f"torchrun's environment is not numbers: {values}")
    if not (0 <= rank < world_size and 0 <= local_rank < local_world_size <= world_size):
        fail(
            f"torchrun's environment is inconsistent: RANK={rank} WORLD_SIZE={world_size} "
            f"LOCAL_RANK={local_rank} LOCAL_WORLD_SIZE={local_world_size}"
        )
    if use_cuda:
        gpus = torch.cuda.device_count()
        if local_rank >= gpus:
            fail(
                f"process {local_rank} of this node has no GPU: the node sees {gpus}. "
                f"Start at most {gpus} processes per node (NPROC_PER_NODE), or leave it unset."
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    backend = "nccl" if use_cuda else "gloo"
    # device_id binds the NCCL communicator to this process's GPU at once (no guessing).
    dist.init_process_group(backend, device_id=device if use_cuda else None)
    return Process(rank, world_size, local_rank, device, backend)


def synthetic_dataset(samples: int, features: int, classes: int, seed: int) -> TensorDataset:
    """Points labelled by a fixed random linear teacher: learnable, with no download, and
    the same on every process (one seed), so DistributedSampler's shares fit together."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(samples, features, generator=generator)
    teacher = torch.randn(features, classes, generator=generator)
    return TensorDataset(inputs, (inputs @ teacher).argmax(dim=1))


def build_model(features: int, classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(features, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, classes),
    )


def save_checkpoint(directory: Path, state: dict) -> Path:
    """Written to a temporary file, flushed to disk, then renamed over the last one: a run
    killed while saving leaves the previous checkpoint whole, never a torn one."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_NAME
    # Unique per node and process: on shared storage, every node writes the same state.
    temporary = directory / f".{CHECKPOINT_NAME}.{socket.gethostname()}.{os.getpid()}.tmp"
    with open(temporary, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return path


def load_checkpoint(process: Process, directory: Path) -> dict | None:
    """The newest checkpoint of any node, handed to every process. The first process of
    each node reads its own folder: torchrun's c10d rendezvous numbers the nodes in the
    order they arrive, so the node that wrote last time's may not be the first now."""
    state = None
    path = directory / CHECKPOINT_NAME
    if process.local_rank == 0 and path.is_file():
        # Tensors, numbers and lists only: weights_only never runs code from the file.
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not process.backend:
        return state
    epochs: list[int] = [-1] * process.world_size
    dist.all_gather_object(epochs, -1 if state is None else int(state["epoch"]))
    newest = max(range(process.world_size), key=lambda rank: epochs[rank])
    if epochs[newest] < 0:
        return None
    shared = [state if process.rank == newest else None]
    dist.broadcast_object_list(shared, src=newest)
    return shared[0]


def train(args: argparse.Namespace, process: Process) -> None:
    torch.manual_seed(args.seed)  # the same initial weights everywhere
    dataset = synthetic_dataset(args.samples, args.features, args.classes, args.seed)
    sampler = DistributedSampler(dataset, num_replicas=process.world_size, rank=process.rank, seed=args.seed)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, pin_memory=process.device.type == "cuda")
    model = build_model(args.features, args.classes).to(process.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    loss_function = nn.CrossEntropyLoss()

    losses: list[float] = []  # mean loss of every epoch, resumed ones included
    start_epoch = 0
    state = load_checkpoint(process, args.checkpoint_dir)
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError) as error:
            fail(
                f"{args.checkpoint_dir / CHECKPOINT_NAME} does not fit this model ({error}). "
                "Move it away, or choose another --checkpoint-dir."
            )
        start_epoch, losses = int(state["epoch"]), list(state["losses"])
    if process.backend:
        # Averages the gradients across processes during backward.
        model = DistributedDataParallel(model, device_ids=[process.device] if process.backend == "nccl" else None)

    if process.first:
        where = f"{process.world_size} process(es), {process.backend or 'no process group'}, on {process.device.type}"
        print(f"train: {where}; {args.samples} samples, batch {args.batch_size} per process", flush=True)
        if state is not None:
            print(f"train: resumed after epoch {start_epoch} (checkpoints in {args.checkpoint_dir})", flush=True)

    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)  # a new order each epoch, the same on every process
        model.train()
        # Loss summed over samples, and samples, on the device: no sync per step.
        totals = torch.zeros(2, device=process.device)
        started = time.perf_counter()
        for inputs, labels in loader:
            inputs = inputs.to(process.device, non_blocking=True)
            labels = labels.to(process.device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_function(model(inputs), labels)
            loss.backward()
            optimizer.step()
            totals[0] += loss.detach() * labels.shape[0]
            totals[1] += labels.shape[0]
        if process.backend:
            dist.all_reduce(totals)
        loss_sum, samples = totals.tolist()  # waits for the device: the time below is the work's
        seconds = time.perf_counter() - started
        losses.append(loss_sum / samples)
        if process.first:
            print(
                f"epoch {epoch + 1}/{args.epochs}  loss {losses[-1]:.4f}  "
                f"{samples / seconds:,.0f} samples/s  {seconds:.2f} s",
                flush=True,
            )
        if process.local_rank == 0:
            unwrapped = model.module if isinstance(model, DistributedDataParallel) else model
            save_checkpoint(
                args.checkpoint_dir,
                {
                    "model": unwrapped.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch + 1,
                    "losses": losses,
                },
            )

    if process.first:
        print(
            f"train: done epochs={args.epochs} loss_first={losses[0]:.6f} loss_last={losses[-1]:.6f} "
            f"resumed_from={start_epoch}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    process = join_the_job(args.cpu)
    try:
        train(args, process)
        if process.backend:
            # Every process leaves together: one that tears the group down while another
            # still writes its checkpoint can abort at exit ("terminate called without an
            # active exception", seen with gloo in torch 2.10). The model's DDP reducer sits
            # in reference cycles: collected now, its pending gloo work is released while
            # the interpreter is whole, not during its shutdown (the same abort, seen
            # after the barrier alone on a loaded machine).
            gc.collect()
            dist.barrier()
    finally:
        if process.backend:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
{% else %}
"""Training entry point: a Keras model trained with the tf.distribute strategy that fits
where it runs: MirroredStrategy on one machine (every GPU, or the CPU),
MultiWorkerMirroredStrategy across machines (TF_CONFIG).

    docker/train                          # every GPU of this machine, or the CPU
    make train ARGS="--epochs 20"         # the same, inside the running container

The data is synthetic (no download), so this runs anywhere as it is: replace
`synthetic_dataset` and `build_model` with your own. Every epoch a checkpoint goes to
--checkpoint-dir (tf.train.CheckpointManager), and a new run resumes from the latest
one: an interrupted run loses at most the epoch it was in. Across machines, every
worker reads that folder, so it must be shared storage. The last line printed is for
scripts:

    train: done epochs=10 loss_first=1.234567 loss_last=0.123456 resumed_from=0
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import NoReturn

import tensorflow as tf


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train the model (synthetic data until you plug in yours).")
    parser.add_argument("--epochs", type=positive, default=10, help="epochs in all, resumed ones included")
    parser.add_argument("--batch-size", type=positive, default=256, help="samples per step and replica")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate (AdamW)")
    parser.add_argument("--samples", type=positive, default=32768, help="size of the synthetic data set")
    parser.add_argument("--features", type=positive, default=32, help="inputs per sample")
    parser.add_argument("--classes", type=positive, default=10, help="classes to tell apart")
    parser.add_argument("--seed", type=int, default=0, help="data and initial weights (the same on every worker)")
    parser.add_argument(
        "--checkpoint-dir", type=Path, default=Path("checkpoints"), help="where checkpoints go (default: checkpoints/)"
    )
    return parser.parse_args(argv)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def fail(message: str) -> NoReturn:
    print(f"train: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def choose_strategy() -> tf.distribute.Strategy:
    """Several machines when TF_CONFIG describes the cluster (docker/train writes it from
    WORKERS and NODE_RANK, for Slurm and Kubernetes alike); else this machine alone."""
    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.MirroredStrategy()


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """The name the strategy was made with: MultiWorkerMirroredStrategy's class is
    CollectiveAllReduceStrategy."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "MultiWorkerMirroredStrategy"
    return type(strategy).__name__


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The worker that logs and keeps the checkpoints: the only one on one machine, the
    chief or worker 0 across machines."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    task_id = getattr(resolver, "task_id", None) or 0
    return task_type in (None, "chief") or (task_type == "worker" and task_id == 0)


def synthetic_dataset(samples: int, features: int, classes: int, seed: int) -> tf.data.Dataset:
    """Points labelled by a fixed random linear teacher: learnable, with no download, and
    the same on every worker (stateless, seeded), which each take their share of."""
    inputs = tf.random.stateless_normal([samples, features], seed=[seed, 0])
    teacher = tf.random.stateless_normal([features, classes], seed=[seed, 1])
    labels = tf.argmax(inputs @ teacher, axis=1)
    return tf.data.Dataset.from_tensor_slices((inputs, labels))


def build_model(features: int, classes: int) -> tf.keras.Model:
    return tf.keras.Sequential(
        [
            tf.keras.Input(shape=(features,)),
            tf.keras.layers.Dense(256, activation="relu"),
            tf.keras.layers.Dense(256, activation="relu"),
            tf.keras.layers.Dense(classes),
        ]
    )


def train(args: argparse.Namespace) -> None:
    strategy = choose_strategy()
    chief = is_chief(strategy)
    replicas = strategy.num_replicas_in_sync
    global_batch = args.batch_size * replicas

    # Each worker takes every n-th batch (DATA): the set is in memory, not files. Whole
    # batches only: every replica runs the same number of steps with the same shapes.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = (
        synthetic_dataset(args.samples, args.features, args.classes, args.seed)
        .shuffle(args.samples, seed=args.seed, reshuffle_each_iteration=True)
        .batch(global_batch, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(options)
    )
    if args.samples < global_batch:
        fail(f"--samples {args.samples} is less than one batch of {global_batch} ({replicas} replicas)")
    distributed = strategy.experimental_distribute_dataset(dataset)

    with strategy.scope():
        tf.keras.utils.set_random_seed(args.seed)  # the same initial weights everywhere
        model = build_model(args.features, args.classes)
        optimizer = tf.keras.optimizers.AdamW(learning_rate=args.lr)
        # The optimizer's state exists before a restore fills it.
        optimizer.build(model.trainable_variables)
        epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        loss_first = tf.Variable(float("nan"), trainable=False)
        loss_last = tf.Variable(float("nan"), trainable=False)
    loss_object = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")

    checkpoint = tf.train.Checkpoint(
        model=model, optimizer=optimizer, epoch=epoch, loss_first=loss_first, loss_last=loss_last
    )
    # Every worker saves (saving is collective across machines), but only the chief into
    # --checkpoint-dir: the others write a throwaway copy of their own.
    directory = args.checkpoint_dir if chief else Path(tempfile.mkdtemp(prefix="train-worker-"))
    manager = tf.train.CheckpointManager(checkpoint, str(directory), max_to_keep=2)
    latest = tf.train.latest_checkpoint(str(args.checkpoint_dir))
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
    start_epoch = int(epoch.numpy())

    @tf.function
    def train_step(batch):
        def step(inputs, labels):
            with tf.GradientTape() as tape:
                per_sample = loss_object(labels, model(inputs, training=True))
                loss = tf.nn.compute_average_loss(per_sample, global_batch_size=global_batch)
            gradients = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))
            return loss

        # Each replica's share of the global mean: their sum is the batch's mean loss.
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(step, args=batch), axis=None)

    if chief:
        print(
            f"train: {strategy_name(strategy)}, {replicas} replica(s); "
            f"{args.samples} samples, batch {args.batch_size} per replica",
            flush=True,
        )
        if latest:
            print(f"train: resumed from {latest} after epoch {start_epoch}", flush=True)

    for current in range(start_epoch, args.epochs):
        total, steps = 0.0, 0
        started = time.perf_counter()
        for batch in distributed:
            total += float(train_step(batch))  # float() waits for the step: the time is the work's
            steps += 1
        seconds = time.perf_counter() - started
        mean_loss = total / steps
        if current == 0:
            loss_first.assign(mean_loss)
        loss_last.assign(mean_loss)
        epoch.assign(current + 1)
        manager.save(checkpoint_number=current + 1)
        if chief:
            print(
                f"epoch {current + 1}/{args.epochs}  loss {mean_loss:.4f}  "
                f"{steps * global_batch / seconds:,.0f} samples/s  {seconds:.2f} s",
                flush=True,
            )

    if chief:
        print(
            f"train: done epochs={args.epochs} loss_first={float(loss_first.numpy()):.6f} "
            f"loss_last={float(loss_last.numpy()):.6f} resumed_from={start_epoch}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()
{% endif %}
