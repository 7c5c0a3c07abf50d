/**
 * Requests from the page to its own Jupyter server's gallery-stage handlers.
 *
 * ServerConnection.makeRequest adds the XSRF header and Jupyter's own credentials; the
 * gallery's token stays in the server, which passes the gallery's refusals on as
 * {kind, message} with their status.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export class StageError extends Error {
  constructor(
    readonly kind: string,
    message: string
  ) {
    super(message);
  }
}

/** A request to our server extension; makeRequest adds the XSRF header and the token. */
export async function requestAPI<T>(
  settings: ServerConnection.ISettings,
  endPoint: string,
  init: RequestInit = {}
): Promise<T> {
  return (await requestWithStatus<T>(settings, endPoint, init)).data;
}

/** As requestAPI, with the status of a successful answer (202 "not ready yet" vs 200). */
export async function requestWithStatus<T>(
  settings: ServerConnection.ISettings,
  endPoint: string,
  init: RequestInit = {}
): Promise<{ status: number; data: T }> {
  const url = URLExt.join(settings.baseUrl, 'gallery-stage', endPoint);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (err) {
    throw new StageError(
      'unreachable',
      'Your Jupyter server cannot be reached. Check your connection and retry.'
    );
  }
  const text = await response.text();
  let data: any = {};
  try {
    data = text ? JSON.parse(text) : {};
  } catch {
    data = { message: text };
  }
  if (!response.ok) {
    let kind = data.kind || 'invalid';
    if (response.status === 404 && !data.kind) {
      kind = 'unreachable';
      data.message =
        'The gallery extension is not enabled on this Jupyter server. ' +
        'Ask the hub administrators to install gallery_stage.';
    } else if (response.status === 403 && !data.kind) {
      kind = 'not-allowed';
    }
    throw new StageError(
      kind,
      data.message || `Request failed (HTTP ${response.status}).`
    );
  }
  return { status: response.status, data: data as T };
}

/** A DOM element with attributes and text (text, never HTML). */
export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: { [key: string]: string } = {},
  text = ''
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    node.setAttribute(key, value);
  }
  if (text) {
    node.textContent = text;
  }
  return node;
}

export function humanSize(size: number | null): string {
  if (size === null || size === undefined) {
    return '';
  }
  const units = ['B', 'KB', 'MB', 'GB'];
  let value = size;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}
