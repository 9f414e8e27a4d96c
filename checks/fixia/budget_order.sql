-- a project's minimum budget is not above its maximum
SELECT id, client_id, budget_min, budget_max FROM projects WHERE budget_min > budget_max
