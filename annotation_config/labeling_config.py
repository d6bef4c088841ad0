"""Renders the Label Studio labeling config that annotators see, from a department catalog.

The backend never assumes the control names written here: it reads them back from whatever config the project
uses (``core/labeling.py``), telling the controls apart by their role:
the single-choice ``Choices`` is the department, a ``TextArea`` with ``readonly="true"`` shows the model's
top-3 alternatives, any other ``TextArea`` is the annotator's optional rationale (``Complex_CoT`` in exports).
"""
from __future__ import annotations

from xml.sax.saxutils import quoteattr

from annotation_config.catalog import Catalog

HINT_CHARS = 120


def render_labeling_config(catalog: Catalog, text_field: str = "text") -> str:
    choices = "\n".join(
        f"      <Choice value={quoteattr(d.name)}"
        + (f" hint={quoteattr(d.duties[:HINT_CHARS])}" if d.duties else "")
        + "/>"
        for d in catalog.departments
    )
    return f"""<View>
  <Header value="市民诉求 Ticket"/>
  <Text name="text" value="${text_field}"/>
  <Header value="模型建议（前三）Model's top-3 suggestions"/>
  <TextArea name="model_suggestions" toName="text" readonly="true" editable="false" rows="3"/>
  <Header value="承办单位 Handling department"/>
  <Filter name="department_filter" toName="department" hotkey="shift+f" minlength="0" placeholder="筛选单位 Filter"/>
  <Choices name="department" toName="text" choice="single" required="true" showInline="false">
{choices}
  </Choices>
  <Header value="理由（可选）Rationale, optional"/>
  <TextArea name="rationale" toName="text" editable="true" rows="3" maxSubmissions="1"
            placeholder="为什么是这个单位？Why this department? (optional)"/>
</View>
"""
