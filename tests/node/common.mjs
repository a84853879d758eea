// What every client script shares: the gateway to call (from the environment the pytest side sets) and
// how results are reported (one JSON document on stdout, an {"error": ...} entry per case that threw, so one
// failing case does not hide the others).

export function settings() {
  const baseURL = process.env.CLEX_BASE_URL;
  const apiKey = process.env.CLEX_API_KEY;
  const model = process.env.CLEX_MODEL;
  if (!baseURL || !apiKey || !model) {
    throw new Error('set CLEX_BASE_URL (the gateway, without /v1), CLEX_API_KEY and CLEX_MODEL');
  }
  return { baseURL, apiKey, model };
}

export async function runCases(cases) {
  const results = {};
  for (const [name, run] of Object.entries(cases)) {
    try {
      results[name] = await run();
    } catch (error) {
      results[name] = { error: String(error?.stack ?? error), status: error?.status ?? error?.statusCode ?? null };
    }
  }
  process.stdout.write(JSON.stringify(results) + '\n');
}
