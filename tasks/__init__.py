"""Inner-loop problems (datasets, networks, synthetic problems, families) and the inner loop."""

from tasks.base import LayeredNet, Task, TaskFamily, num_params
from tasks.data_files import DatasetError, data_dir
from tasks.families import get_family, list_families
from tasks.registry import OFFLINE_TASKS, UnknownNameError, get_task, list_tasks
from tasks.train import TrainState, backprop, init_state, train, train_step, unroll

__all__ = [
    "OFFLINE_TASKS",
    "DatasetError",
    "LayeredNet",
    "Task",
    "TaskFamily",
    "TrainState",
    "UnknownNameError",
    "backprop",
    "data_dir",
    "get_family",
    "get_task",
    "init_state",
    "list_families",
    "list_tasks",
    "num_params",
    "train",
    "train_step",
    "unroll",
]
