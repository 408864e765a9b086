"""Robust planning: setup and range scenarios and their influence sets (issue 10).

:mod:`optimizer.robust.scenarios` (``Scenario``, ``nominal9``, ``set21``, ``scenario_list``) and
:mod:`optimizer.robust.influence` (``scenario_influence``, ``scenario_form``).
"""
