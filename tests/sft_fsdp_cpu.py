"""Chapter 7's loop on CPU processes: run with ``torchrun --nproc_per_node 2 tests/sft_fsdp_cpu.py``
(``tests/test_sft.py`` does, slow).

First the command line, ``python -m course_lib.sft --preset tiny`` (its ``main``), in these processes:
Accelerate finds them (``MULTI_CPU``) and wraps the model in ``DistributedDataParallel``; rank 0 prints
the run's summary as one JSON line.

Then the training step under FSDP, against data parallel.
Accelerate turns FSDP on for GPUs only, so this script shards the course's tiny pretrained model itself
with ``torch.distributed.fsdp.fully_shard`` (FSDP2, what Accelerate calls on GPUs: one unit per decoder
block, then the whole model) and trains it with Chapter 5's ``train_steps`` on Chapter 7's packed SFT
batches, each process its share of every step. The same steps then run on a copy under
``DistributedDataParallel``. Rank 0 prints one more JSON line: both histories and whether the parameters
were sharded (DTensors holding half of each weight).
"""

import copy
import json

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from course_lib.instruct import chat_tokenizer
from course_lib.pretraining import pretrained_course_lm, train_steps
from course_lib.sft import main as command_line
from course_lib.sft import preset, prepare_sft_data, sft_step_batches


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    command_line(["--preset", "tiny", "--no-progress"])
    config = preset("tiny", total_steps=3)
    model, tokenizer = pretrained_course_lm(config.base, progress=False)
    tokenizer = chat_tokenizer(tokenizer)
    data = prepare_sft_data(tokenizer, config)
    units = data.units(config)
    model.config.use_cache = False

    def steps():
        return list(sft_step_batches(data, units, config, tokenizer.pad_token_id, process_index=rank, n_processes=world))

    replicated = DistributedDataParallel(copy.deepcopy(model))
    for block in model.model.layers:
        fully_shard(block)
    fully_shard(model)
    sharded = type(next(model.parameters())).__name__ == "DTensor"
    fsdp = train_steps(model, steps(), config.settings())
    ddp = train_steps(replicated, steps(), config.settings())
    if rank == 0:
        print(json.dumps({"processes": world, "sharded": sharded, "fsdp": fsdp, "ddp": ddp}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
