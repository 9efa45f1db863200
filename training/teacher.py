"""The frozen teacher's velocity, the regression target of the distillation objectives.

:func:`teacher_velocity` evaluates ``b_t(x)`` of a velocity model or the diagonal of a
flow map; :func:`teacher_target` adds class conditioning: the teacher at the batch's labels,
guided (``b^w_t(x; y)``, classifier-free guidance) when the batch's
:class:`~anystep.training.conditioning.Condition` carries teacher guidance scales.
"""

from __future__ import annotations

from torch import Tensor, nn

from anystep.core.flowmap import guided_velocity
from anystep.training.conditioning import Condition, conditioning_of
from anystep.training.flow_objective import ObjectiveError

__all__ = ["teacher_target", "teacher_velocity"]


def teacher_velocity(teacher: nn.Module | None, x: Tensor, t: Tensor) -> Tensor:
    """Evaluate a teacher velocity ``b_t(x)``.

    A velocity model is called as ``teacher(x, t)``; a flow map contributes its diagonal
    ``v_{t,t}(x)`` (the tangent condition makes it a velocity, successors §2).

    Args:
        teacher: velocity model (or flow map with ``.velocity``).
        x: ``[B, *shape]``.
        t: ``[B]``.

    Returns:
        ``[B, *shape]``.

    Raises:
        ObjectiveError: if no teacher was given.
    """
    if teacher is None:
        raise ObjectiveError(
            "this objective distils a teacher velocity b_t: pass teacher=<velocity model> "
            "(train one with the 'velocity' objective first)"
        )
    if getattr(teacher, "kind", None) == "flowmap":
        return teacher.velocity(x, t)
    return teacher(x, t)



def teacher_target(teacher: nn.Module | None, x: Tensor, t: Tensor, cond: Condition) -> Tensor:
    """The teacher velocity at ``(x, t)``: ``b_t(x)``, or the guided ``b^w_t(x; y)`` for a conditional map.

    Args:
        teacher: frozen velocity model (or flow map: its diagonal).
        x: ``[B, *shape]``; t: ``[B]``.
        cond: the batch's :class:`Condition` (``w_teacher`` None: unguided).

    Returns:
        ``[B, *shape]``.

    Raises:
        ObjectiveError: no teacher, or a conditional student with an unconditional teacher.
    """
    if cond.y is None:
        return teacher_velocity(teacher, x, t)
    k_teacher, _ = conditioning_of(teacher)
    if k_teacher != cond.null_class:
        raise ObjectiveError(
            f"the student has {cond.null_class} classes but the teacher has {k_teacher or 'none'}; distil a "
            "class-conditional map from a velocity teacher trained on the same labels (label dropout > 0)"
        )
    if cond.w_teacher is None:
        return teacher.velocity(x, t, cond.y)
    return guided_velocity(teacher, x, t, cond.y, cond.w_teacher, cond.null_class)

