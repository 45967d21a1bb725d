"""The Spider evaluator, a product of its own: SQL extraction from model output (``extract``),
read-only SQLite execution and EX (``execution``), the Spider SQL parser (``spider_sql``), exact set
match and hardness (``exact_match``), and scoring a prediction file (``score``).

Nothing here imports the training side; ``ray-spider eval`` runs it on its own.
"""
