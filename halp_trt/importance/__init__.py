"""Channel importance criteria, picked by name.

``taylor`` (HALP's BN-based first-order Taylor score, weight-Taylor without BN; needs
gradients), ``taylor-abs`` (the same with the coupled layers' terms summed in absolute
value), ``taylor-abs-mean`` and ``taylor-l2`` (the terms averaged, or combined by their
L2 norm), ``taylor-fisher`` (``taylor`` squared per minibatch, then averaged: the
empirical Fisher information), ``taylor-weights`` (scored on the weights of the layers
that write and read a channel, not on its BatchNorms), ``l1`` and ``l2`` (filter
norms), ``sp-lamp`` (LAMP-normalised squared filter norms) and ``sensitivity`` /
``sensitivity-loss`` (each group's accuracy or loss measured at each width, before
training, on calibration minibatches); ``auto`` (:data:`DEFAULT_IMPORTANCE`) is
``taylor-fisher`` or ``taylor-weights-mean`` by the latency target and the width of the
residual streams (:func:`choose_importance`, :func:`stream_width_ratio`), and
``taylor-fisher`` at every target where depthwise convolutions sit on the streams
(:func:`depthwise_streams`).
``get_importance(name)(graph)`` builds one for a channel graph; :func:`resolve_importance`
also takes a criterion object (a class or a factory).
"""

from . import magnitude, sensitivity, taylor  # noqa: F401  (registers the built-in criteria)
from .base import (
    AUTO_ABOVE,
    AUTO_FISHER_BELOW,
    AUTO_IMPORTANCE,
    AUTO_MEAN_STREAMS,
    DEFAULT_IMPORTANCE,
    Importance,
    ImportanceError,
    auto_choice,
    auto_upper_branch,
    choose_importance,
    depthwise_streams,
    get_importance,
    list_importances,
    register_importance,
    resolve_importance,
    stream_width_ratio,
)
from .magnitude import lamp_scores

__all__ = [
    "AUTO_ABOVE",
    "AUTO_FISHER_BELOW",
    "AUTO_IMPORTANCE",
    "AUTO_MEAN_STREAMS",
    "DEFAULT_IMPORTANCE",
    "Importance",
    "ImportanceError",
    "auto_choice",
    "auto_upper_branch",
    "choose_importance",
    "depthwise_streams",
    "get_importance",
    "lamp_scores",
    "list_importances",
    "register_importance",
    "resolve_importance",
    "stream_width_ratio",
]
