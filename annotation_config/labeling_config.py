"""Renders the Label Studio labeling config that annotators see, from a department catalog.

One screen at 1366×768 without scrolling: the ticket, the model's suggestions (top-k, one hotkey or click each,
the top one preselected by the prediction), and every department in columns, grouped by meaning, behind a filter
box that also matches aliases.

The backend never assumes the control names written here: it reads them back from whatever config the project
uses (``core/labeling.py``), telling the controls apart by their role: the single-choice ``Choices`` with fixed
``Choice`` values is the department list; a single-choice ``Choices`` whose ``Choice`` values read task fields
(``value="$suggestion_1"``...) is the suggestion row, filled by the backend in each task's data; a ``TextArea`` is the
annotator's optional rationale (``Complex_CoT`` in exports).

Why the suggestion row is made this way, in Label Studio 1.23.2: a ``Choices value="$field"`` (dynamic choices) makes
every task import fail unless each task already carries that field; a ``Choice`` has no ``name``, so its ``$field``
is not required at import. Label Studio's config editor refuses a new config while annotations hold labels the
control does not list, so the row also lists every department, hidden and nested (never rendered nor selected).

Why each department's ``value`` carries its aliases: Label Studio's ``Filter`` matches a choice's ``value`` only, so
"公安" or "派出所" finds 市公安局 only if those words are in it; ``alias`` keeps the submitted result the plain name
and ``html`` keeps the screen short.
"""
from __future__ import annotations

from xml.sax.saxutils import quoteattr

from annotation_config.catalog import Catalog, Department

HINT_CHARS = 120
OTHER_GROUP = "其他 Other"
SUGGESTION_FIELD = "suggestion_{rank}"
PROBABILITIES_FIELD = "suggestion_probabilities"
QUEUE_TAB_TITLE = "模型队列 Model queue"  # the data-manager tab the backend adds to each project it connects to
# Bound explicitly so that Label Studio does not give the hidden list one of the keys an annotator presses.
UNREACHABLE_HOTKEY = "ctrl+alt+shift+f12"

# Label Studio renders <View className="..."> as a div with that class; the lsf-* classes are its own (1.23).
STYLE = """
  .ticket { font-size: 15px; line-height: 1.5; max-height: 6em; overflow-y: auto; padding: 4px 10px;
            background: #f7f7f9; border-radius: 4px; }
  .suggestions { display: flex; align-items: center; flex-wrap: wrap; column-gap: 14px; margin: 6px 0 4px 0;
                 padding: 0 10px; border: 2px solid #1f6feb; border-radius: 4px; }
  .suggestions .lsf-choices { margin: 0 !important; padding: 0 !important; }
  .suggestions [class*=typography-title], .department-head [class*=typography-title] {
      margin: 0 !important; font-size: 13px !important; line-height: 24px !important; }
  .suggestions .lsf-choice { margin-right: 16px; font-size: 15px; font-weight: 600; }
  .suggestions .lsf-choice:has(input[name=""]) { display: none; }
  .suggestions [class*=typography-title]:last-child { color: #6b6b6b; font-weight: normal; }
  .department-head { display: flex; align-items: center; column-gap: 12px; }
  .department-head input { max-width: 420px; }
  .all-departments .lsf-choices { display: block; column-count: 6; column-gap: 8px; margin-top: 2px; }
  .department-group { break-inside: avoid; padding-top: 3px; }
  .department-group:not(:has(.lsf-choice:not(.lsf-choice_hidden))) { display: none; }
  .department-group [class*=typography-title] { margin: 0 !important; font-size: 12px !important; line-height: 18px !important;
                                                color: #6b6b6b; }
  .department-group .lsf-choice__item, .department-group .ant-checkbox-wrapper { font-size: 12.5px; line-height: 19px; }
  .department-group .lsf-hint { font-size: 9px; color: #aaa; }
"""


def _display_name(department: Department) -> str:
    """What the list shows: the name without the city prefix every unit shares (the full name is submitted)."""
    return department.name[1:] if department.name.startswith("市") and len(department.name) > 2 else department.name


def _choice(department: Department) -> str:
    searchable = " ".join((department.name, *department.aliases))
    attrs = [f"value={quoteattr(searchable)}"]
    if searchable != department.name:
        attrs.append(f"alias={quoteattr(department.name)}")
    attrs.append(f"html={quoteattr(_display_name(department))}")
    if department.duties:
        attrs.append(f"hint={quoteattr(department.duties[:HINT_CHARS])}")
    return f"        <Choice {' '.join(attrs)}/>"


def _groups(catalog: Catalog) -> dict[str, list[Department]]:
    groups: dict[str, list[Department]] = {}
    for department in catalog.departments:
        groups.setdefault(department.group or OTHER_GROUP, []).append(department)
    return groups


def _suggestion_row(catalog: Catalog, top_k: int) -> str:
    slots = "\n".join(f"      <Choice value=\"${SUGGESTION_FIELD.format(rank=rank)}\" hotkey=\"{rank}\"/>" for rank in range(1, top_k + 1))
    every = "\n".join(f"        <Choice value={quoteattr(d.name)}/>" for d in catalog.departments)
    keys = "/".join(str(rank) for rank in range(1, top_k + 1))
    return f"""  <View className="suggestions">
    <Header value="模型建议 Suggestions（按 {keys} 选择 press {keys}）"/>
    <Choices name="suggestion" toName="text" choice="single" layout="inline">
{slots}
      <Choice value="全部单位 every department" hotkey="{UNREACHABLE_HOTKEY}" style="display: none">
{every}
      </Choice>
    </Choices>
    <Header value="${PROBABILITIES_FIELD}"/>
  </View>"""


def render_labeling_config(catalog: Catalog, text_field: str = "text", top_k: int = 3) -> str:
    if not 1 <= top_k <= 9:
        raise ValueError(f"top_k must be between 1 and 9 (one digit hotkey each), got {top_k}")
    groups = "\n".join(
        f"      <View className=\"department-group\">\n        <Header value={quoteattr(name)}/>\n"
        + "\n".join(_choice(d) for d in members)
        + "\n      </View>"
        for name, members in _groups(catalog).items()
    )
    return f"""<View className="annotator-screen">
  <Style>{STYLE}</Style>
  <View className="ticket">
    <Text name="text" value="${text_field}"/>
  </View>
{_suggestion_row(catalog, top_k)}
  <View className="all-departments">
    <View className="department-head">
      <Header value="全部单位 All departments（在此选择即覆盖建议 a pick here overrides the suggestion）"/>
      <Filter name="department_filter" toName="department" hotkey="shift+f" minlength="1"
              placeholder="筛选单位或别名 Filter by name or alias (Shift+F; Enter picks the first)"/>
    </View>
    <Choices name="department" toName="text" choice="single">
{groups}
    </Choices>
  </View>
  <TextArea name="rationale" toName="text" editable="true" rows="1" maxSubmissions="1"
            placeholder="理由（可选）Why this department? (optional)"/>
</View>
"""
