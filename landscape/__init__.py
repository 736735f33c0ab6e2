"""Loss-landscape probes of the asymmetric-valley paper (Sect. 3-4, 6.1) and its companion (Sect. 2-3)
on any torch.nn.Module + parameter dicts, or on fedsign checkpoints (`fedsign-landscape`). No Flower."""

from landscape.directions import (COMMON_NOISES, SPECIAL_DIRECTIONS, noise_direction, scale_direction,
                                  sign_consistent, sign_ratio_direction, special_direction)
from landscape.evaluator import Evaluator, ProbeData
from landscape.groups import GROUPS, group_names
from landscape.hessian import HessianOperator, eigenpairs, hessian, hutchinson_trace, slq_density
from landscape.interp import greedy_soup, interpolate, uniform_soup
from landscape.mine import mine, mine_vvv, mine_wpeak
from landscape.result import ProbeResult
from landscape.sign_sweep import sign_sweep
from landscape.signs import signs, sign_consistency_ratio
from landscape.surface import surface
from landscape.valley import Direction, asymmetry_metrics, valley

__all__ = ["COMMON_NOISES", "GROUPS", "SPECIAL_DIRECTIONS", "Direction", "Evaluator", "HessianOperator",
           "ProbeData", "ProbeResult", "asymmetry_metrics", "eigenpairs", "greedy_soup", "group_names",
           "hessian", "hutchinson_trace", "interpolate", "mine", "mine_vvv", "mine_wpeak", "noise_direction",
           "scale_direction", "sign_consistency_ratio", "sign_consistent", "sign_ratio_direction", "sign_sweep",
           "signs", "slq_density", "special_direction", "surface", "uniform_soup", "valley"]
