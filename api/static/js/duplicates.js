// Page 3: duplicate groups side by side; the curator picks the member to keep and confirms the
// group (the choice is saved as the review comment) or dismisses it as not duplicates.

import { api } from "./api.js";
import { fill, h } from "./dom.js";
import { kindName, picture } from "./findings.js";
import { review } from "./review.js";

const KINDS = ["exact_duplicate", "near_duplicate", "label_conflict", "split_leak"];

function members(finding) {
  const known = finding.evidence?.members;
  if (known?.length) return known;
  return finding.image_ids.map((id, i) => ({ image_id: id, path: finding.images[i] }));
}

function keeper(finding) {
  const keep = finding.evidence?.keep;
  const list = members(finding);
  const match =
    typeof keep === "string"
      ? list.find((m) => m.path === keep)
      : list.find((m) => m.image_id === keep?.image_id);
  return (match ?? list[0]).image_id;
}

// Where the copies carry different labels: the labels' vote, the label suggested and the model's
// support for each, so the curator sees why the suggested copy is the one to keep.
function labelNote(finding) {
  const counts = finding.evidence?.label_counts;
  if (!counts || Object.keys(counts).length < 2) return null;
  const vote = Object.entries(counts).map(([label, n]) => `${label} ×${n}`).join(", ");
  const model = Object.entries(finding.evidence.model_probability ?? {})
    .sort((a, b) => b[1] - a[1])
    .map(([label, p]) => `${label} ${p.toFixed(2)}`)
    .join(", ");
  return h(
    "p",
    { class: "group-labels" },
    `Labels disagree (${vote}). `,
    finding.suggested_label ? ["Suggested label: ", h("strong", {}, finding.suggested_label), ". "] : null,
    model ? `The model's probability: ${model}.` : null,
  );
}

function groupCard(initial) {
  let finding = initial;
  let chosen = keeper(initial);
  const card = h("article", { class: "card group", "aria-labelledby": `group-${finding.id}` });
  const render = (message) => {
    const name = `keep-${finding.id}`;
    const choices = members(finding).map((member) => {
      const id = `${name}-${member.image_id}`;
      const facts = [member.label, member.split].filter(Boolean).join(" · ");
      return h(
        "div",
        { class: "member" },
        picture(member.image_id, member.path, { size: "medium", alt: `${member.path}${member.label ? `, labeled ${member.label}` : ""}` }),
        facts ? h("p", { class: "muted" }, facts) : null,
        h(
          "label",
          { for: id, class: "keep" },
          h("input", {
            type: "radio",
            id,
            name,
            value: member.image_id,
            checked: member.image_id === chosen,
            onchange: () => (chosen = member.image_id),
          }),
          member.image_id === keeper(finding) ? " Keep (suggested)" : " Keep this one",
        ),
      );
    });
    const decided = finding.status !== "open";
    fill(card,
      h(
        "div",
        { class: "card-head" },
        h("h2", { id: `group-${finding.id}` }, `${kindName(finding.kind)} · ${members(finding).length} images`),
        h("span", { class: `status status-${finding.status}` }, finding.status),
        h("span", { class: "muted" }, `score ${finding.score.toFixed(2)} · #${finding.id}`),
      ),
      message ? h("div", { class: "notice error", role: "alert" }, message) : null,
      labelNote(finding),
      h("fieldset", { class: "members" }, h("legend", { class: "visually-hidden" }, "Which image to keep"), choices),
      h(
        "div",
        { class: "actions" },
        h("button", { type: "button", class: "confirm", onclick: () => decide("confirm") }, decided ? "Confirm again, keep selected" : "Confirm duplicates, keep selected"),
        h("button", { type: "button", onclick: () => decide("dismiss") }, "Not duplicates"),
      ),
    );
  };
  const decide = async (action) => {
    const member = members(finding).find((m) => m.image_id === chosen);
    const comment = action === "confirm" && member ? `keep: ${member.path} (image ${member.image_id})` : undefined;
    const result = await review(finding, action, comment ? { comment } : {});
    finding = result.finding;
    render(result.conflict);
  };
  render();
  return card;
}

export async function renderDuplicates(main, route) {
  const status = route.params.get("status") ?? "open";
  const page = await api(`/audits/${route.auditId}/findings`, {
    params: { kind: KINDS, status, limit: 100 },
  });
  const statusSelect = h(
    "select",
    { id: "dup-status" },
    [["open", "open"], ["", "any status"], ["confirmed", "confirmed"], ["dismissed", "dismissed"]].map(([value, text]) =>
      h("option", { value, selected: value === status }, text),
    ),
  );
  statusSelect.addEventListener("change", () => {
    location.hash = `#/audits/${route.auditId}/duplicates?status=${statusSelect.value}`;
  });
  fill(main,
    h(
      "div",
      { class: "page-head" },
      h("h1", {}, "Duplicate groups"),
      h("div", { class: "field" }, h("label", { for: "dup-status" }, "Status"), statusSelect),
    ),
    page.items.length
      ? h("div", { class: "groups" }, page.items.map(groupCard))
      : h("p", { class: "muted" }, "No duplicate groups match."),
    page.next_cursor ? h("p", { class: "muted" }, "Showing the 100 highest-scoring groups.") : null,
  );
}
