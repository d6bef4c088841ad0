"""Renders the Label Studio labeling config that annotators see, from a department catalog.

One screen at 1366×768 without scrolling: the ticket, the model's suggestions (top-k, one hotkey or click each,
the top one preselected by the prediction), and every department in columns, grouped by meaning, behind a filter
box that also matches aliases.

The backend never assumes the control names written here: it reads them back from whatever config the project
uses (``core/labeling.py``), telling the controls apart by their role: the single-choice ``Choices`` with fixed
``Choice`` values is the department list; a single-choice ``Choices`` that loads its options from the task
(``value="$field"``) holds the suggestions the backend writes into each task; a ``TextArea`` is the annotator's
optional rationale (``Complex_CoT`` in exports).

Why each department's ``value`` carries its aliases: Label Studio's ``Filter`` matches a choice's ``value`` only, so
"公安" or "派出所" finds 市公安局 only if those words are in it; ``alias`` keeps the submitted result the plain name
and ``html`` keeps the screen short.
"""
from __future__ import annotations

from xml.sax.saxutils import quoteattr

from annotation_config.catalog import Catalog, Department

HINT_CHARS = 120
OTHER_GROUP = "其他 Other"
SUGGESTIONS_FIELD = "suggestions"

# Label Studio renders <View className="..."> as a div with that class; the lsf-* classes are its own (1.23).
STYLE = """
  .ticket { font-size: 15px; line-height: 1.5; max-height: 6em; overflow-y: auto; padding: 4px 10px;
            background: #f7f7f9; border-radius: 4px; }
  .suggestions { display: flex; align-items: center; flex-wrap: wrap; column-gap: 14px; margin: 6px 0 4px 0;
                 padding: 0 10px; border: 2px solid #1f6feb; border-radius: 4px; }
  .suggestions .lsf-choices { margin: 0 !important; padding: 0 !important; }
  .suggestions [class*=typography-title], .department-head [class*=typography-title] {
      margin: 0 !important; font-size: 13px !important; line-height: 24px !important; }
  .suggestions .lsf-choice { margin-right: 16px; font-size: 15px; }
  .department-head { display: flex; align-items: center; column-gap: 12px; }
  .department-head input { max-width: 420px; }
  .all-departments .lsf-choices { display: block; column-count: 6; column-gap: 8px; margin-top: 2px; }
  .department-group { break-inside: avoid; padding-top: 3px; }
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


def render_labeling_config(catalog: Catalog, text_field: str = "text") -> str:
    groups = "\n".join(
        f"      <View className=\"department-group\">\n        <Header value={quoteattr(name)}/>\n"
        + "\n".join(_choice(d) for d in members)
        + "\n      </View>"
        for name, members in _groups(catalog).items()
    )
    return f"""<View>
  <Style>{STYLE}</Style>
  <View className="ticket">
    <Text name="text" value="${text_field}"/>
  </View>
  <View className="suggestions">
    <Header value="模型建议 Suggestions（按 1/2/3 选择 press 1/2/3）"/>
    <Choices name="suggestion" toName="text" choice="single" value="${SUGGESTIONS_FIELD}" layout="inline"/>
  </View>
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
