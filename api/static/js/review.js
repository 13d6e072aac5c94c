// Saving a decision: POST /findings/{id}/review with the version the curator saw. A 409 means
// someone else decided first; the finding is reloaded and the curator is told in plain words.

import { api, ApiError } from "./api.js";
import { notify } from "./dom.js";

const DONE = { confirm: "Confirmed", dismiss: "Dismissed", relabel: "Relabeled" };

/** Resolves to the finding as the server now has it, whether the decision was `saved`, and on a
 * conflict the `conflict` message to keep on screen. */
export async function review(finding, action, extra = {}) {
  try {
    const { finding: updated } = await api(`/findings/${finding.id}/review`, {
      method: "POST",
      body: { action, version: finding.version, ...extra },
    });
    const label = extra.new_label ? ` as “${extra.new_label}”` : "";
    notify(`${DONE[action]} finding #${finding.id}${label}`);
    return { finding: updated, saved: true };
  } catch (error) {
    if (error instanceof ApiError && error.status === 409) {
      const current = await api(`/findings/${finding.id}`);
      const who = current.reviewer ? ` by ${current.reviewer}` : "";
      const message =
        `Not saved: finding #${finding.id} was changed${who} while you looked at it ` +
        `(now “${current.status}”, version ${current.version}). It has been reloaded; decide again.`;
      notify(message, { error: true });
      return { finding: current, saved: false, conflict: message };
    }
    notify(`Not saved: ${error.message}`, { error: true });
    return { finding, saved: false };
  }
}
