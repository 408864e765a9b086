"""Solver back ends for :class:`optimizer.PlanProblem` besides cvxpy: the matrix-free
first-order solver (:mod:`optimizer.solvers.first_order`)."""
