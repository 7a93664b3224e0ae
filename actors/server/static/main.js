// The page: a hash router (#/ the overview, #/app/NAME an app), the token dialog, and the
// notice line where every error shows the API's own message.
import { token, whenUnauthorized } from "./api.js";
import { showApp } from "./app.js";
import { replace } from "./dom.js";
import { showOverview } from "./overview.js";

const main = document.getElementById("main");
const notice = document.getElementById("notice");
const dialog = document.getElementById("token-dialog");
const input = document.getElementById("token-input");
let leave = () => {};  // stops the current view's polling and streams

export function say(message, kind = "error") {
  if (!message) { notice.hidden = true; return; }
  replace(notice, message);
  notice.className = kind;
  notice.hidden = false;
}

function askToken() {
  input.value = token.get();
  if (!dialog.open) dialog.showModal();
}

document.getElementById("token-button").addEventListener("click", askToken);
document.getElementById("token-cancel").addEventListener("click", () => dialog.close());
document.getElementById("token-form").addEventListener("submit", () => {
  token.set(input.value.trim());
  say("");
  route();
});
whenUnauthorized(askToken);  // the caller shows the API's message

function route() {
  leave();
  say("");
  const match = location.hash.match(/^#\/app\/([^/]+)$/);
  leave = match ? showApp(main, decodeURIComponent(match[1]), say)
                : showOverview(main, say);
}

window.addEventListener("hashchange", route);
route();
