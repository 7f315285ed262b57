"""Problems: one worker's local objective f_i. The global objective is the average of f_i over ranks."""

from mpiopt.problems.base import Problem
from mpiopt.problems.logistic import LogisticProblem

__all__ = ["Problem", "LogisticProblem"]
