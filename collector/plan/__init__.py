"""The query planner (in the spirit of Pixie's compiler, IR and distributed splitter):

    query.py      text -> parse tree
    binder.py     parse tree -> logical plan (ir.py): typed operators bound once against
                  the catalog (bind_expr.py, functions.py, aggregates.py, types.py)
    split.py      logical plan -> an edge part and a collector part, with the rewrite
                  rules of rules/ (top-N pushdown, column pruning, node pruning)
    render.py     each part -> a SQL syntax tree (render_expr.py, sketch.py, sql.py);
                  text comes last, with the node and the time range as parameters
    compile.py    the whole: plan_pipe (and plan_sql, the SQL form); model.py the result

docs/query-language.md is the language's reference; tests/helpers/oracle.py evaluates
it independently of all this, and tests/collector/test_exactness.py holds the two equal.
"""

from pxo.collector.plan.aggregates import RELATIVE_ERROR
from pxo.collector.plan.binder import LOCAL
from pxo.collector.plan.compile import plan_pipe, plan_sql
from pxo.collector.plan.model import Fragment, Plan

__all__ = ["LOCAL", "RELATIVE_ERROR", "Fragment", "Plan", "plan_pipe", "plan_sql"]
